"""The compute library: data, tokenizer, model, training, RL, evaluation. Never imports Dagster."""
