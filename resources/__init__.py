"""Resources: artifact store, DuckDB catalog, compute launchers, crawl targets. Settings live here, read at run time."""
