"""pytest setup shared by the unit tests (tests/) and the notebook tests (pytest --nbval-lax notebooks).

The notebooks run in order (01 prepares data, 03 trains, 05 evaluates...) and exchange data through
files, so they share one artefact root for the whole session: a temporary REVENA_HOME, never the
repository's own data/ and trained/, which may hold a researcher's real runs.
"""

import os
import shutil
import tempfile

_created_home = None


def pytest_configure(config):
    global _created_home
    if not os.environ.get("REVENA_HOME"):
        _created_home = tempfile.mkdtemp(prefix="revena_nbval_")
        os.environ["REVENA_HOME"] = _created_home


def pytest_unconfigure(config):
    if _created_home:
        shutil.rmtree(_created_home, ignore_errors=True)


def pytest_collectstart(collector):
    # Rich outputs change from run to run (plot ids, widget model ids, timings): never compare them.
    if hasattr(collector, "skip_compare"):  # nbval's notebook collector
        collector.skip_compare += (
            "text/html",
            "application/javascript",
            "application/vnd.plotly.v1+json",
            "application/vnd.jupyter.widget-view+json",
            "image/png",
            "stderr",
        )
