"""Distributed training: DeepSpeed placement of the frozen LLM (`deepspeed_config`, `engine`), Ray Train
orchestration of the one training loop (`ray_train`, `launch_cli`), catalog encoding sharded over ranks
(`sharded_eval`), Ray Jobs submission (`submit`), and catalog encoding / batch recommendation on Ray
actors (`ray_catalog`)."""
