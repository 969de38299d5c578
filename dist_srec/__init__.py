"""dist-srec: LLM-SRec (Kim et al., KDD 2025) as a distributed training system.

Data flow: raw interactions -> parquet catalog -> webdataset shards -> (Ray Train workers)
-> spliced input embeddings -> frozen LLM (DeepSpeed) -> MLP heads -> fused losses
-> checkpoint -> evaluation / recommendation.
"""

__version__ = "0.1.0"
