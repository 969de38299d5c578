"""Using a trained model: loading a checkpoint (`load`), evaluating it (`evaluate`), recommending for one
user (`recommend`), and offline batch jobs at catalog scale: item vectors encoded into a sharded store
(`encode`), exact chunked top-K for many users into parquet parts (`worker`, `batch_jobs`)."""
