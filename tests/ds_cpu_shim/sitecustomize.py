"""Copied nowhere: this folder goes first on the PYTHONPATH of an `accelerate launch` that the launch tests run on CPU
(tests/test_launch.py). In each process that the launcher starts with DeepSpeed (`ACCELERATE_USE_DEEPSPEED=true`, set
from the accelerate YAML's `distributed_type: DEEPSPEED`), it applies `dist_runs.gloo_for_deepspeed`: the gloo backend
instead of a GPU's NCCL. This is the only change to the documented command besides the process count; on a GPU server
the same command needs no shim."""
import os, sys

if os.environ.get('ACCELERATE_USE_DEEPSPEED', '').lower() == 'true' and os.environ.get('LOCAL_RANK') is not None:
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from dist_runs import gloo_for_deepspeed
    gloo_for_deepspeed()
    sys.path.pop(0)
