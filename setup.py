"""The compiled pieces: the NCSA-shaped parse fast path (include/agent_traffic/ingest/_clf.c) and
the JSON object writer of delivery planning (include/agent_traffic/delivery/vendors/_jsonobj.c).

`optional=True`: where no C compiler is, the install goes on without them; parsing then runs the
DuckDB regex path for every line and planning serializes with Arrow kernels (the same results;
see docs/parsing.md and docs/performance.md).
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "agent_traffic.ingest._clf",
            sources=["include/agent_traffic/ingest/_clf.c"],
            extra_compile_args=["-O2"],
            optional=True,
        ),
        Extension(
            "agent_traffic.delivery.vendors._jsonobj",
            sources=["include/agent_traffic/delivery/vendors/_jsonobj.c"],
            extra_compile_args=["-O2"],
            libraries=["m"],  # fma(), for the times exactly half a millisecond off
            optional=True,
        ),
    ]
)
