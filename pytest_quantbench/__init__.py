"""pytest-quantbench: LLM quantization benchmarks as pytest tests.

Benchmark tests take the `quantbench` fixture and are parametrized over model x precision x decoding; see README.
"""

from .decoding import Decoding
from .decoding import register as register_decoding
from .fixture import QuantBenchmark
from .precisions import Precision
from .precisions import register as register_precision
from .tasks import Task, TaskResult
from .tasks import register as register_task

__version__ = "0.1.0"
__all__ = [
           "Decoding",
           "Precision",
           "QuantBenchmark",
           "Task",
           "TaskResult",
           "__version__",
           "register_decoding",
           "register_precision",
           "register_task",
]
