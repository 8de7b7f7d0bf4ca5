"""The environment label: what tells two machines apart in a report."""
import torch

from bench.measure.env import describe
from bench.record.schema import Env


def test_describe_fills_the_env_section():
    env = Env(**describe(torch.device("cpu")))  # every field of the schema, no more
    assert env.device == "cpu" and env.cuda is None and env.torch == torch.__version__
    assert env.machine == f"{env.cpu} ({torch.get_num_threads()} threads)"
