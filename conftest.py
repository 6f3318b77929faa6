"""Root pytest configuration.

Notebook kernels started by nbval inherit this process's environment, so setting
``DEFLECT_SMOKE=1`` here switches the benchmark notebooks to their fixture-sized smoke mode.
"""

import os


def pytest_configure(config):
    os.environ["DEFLECT_SMOKE"] = "1"
    os.environ.setdefault("MPLBACKEND", "Agg")
