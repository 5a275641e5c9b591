"""The one compiled piece: the NCSA-shaped parse fast path (include/agent_traffic/ingest/_clf.c).

`optional=True`: where no C compiler is, the install goes on without it and parsing runs the
DuckDB regex path for every line (the same results; see docs/parsing.md).
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "agent_traffic.ingest._clf",
            sources=["include/agent_traffic/ingest/_clf.c"],
            extra_compile_args=["-O2"],
            optional=True,
        )
    ]
)
