"""Compute for the data stages (crawl, WARC import, extract, filter, dedupe, decontaminate).

Nothing here imports Dagster; datatrove is imported inside functions so that importing a module of this
package stays cheap.
"""
