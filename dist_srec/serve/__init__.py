"""Serving at catalog scale: item vectors in a sharded on-disk store, exact chunked top-K, batch
recommendation into parquet parts (`store`, `encode`, `worker`, `batch`, `cli`)."""
