"""Ray on a cluster: Ray Train orchestration of the one training loop (`ray_train`), catalog encoding
and batch recommendation on Ray actors (`ray_catalog`), and Ray Jobs submission (`submit`)."""
