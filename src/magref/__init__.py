"""magref: MAGREF (masked guidance for any-reference video generation) on diffusers.

Flow: composition -> conditioning -> pipeline -> cli. Model classes are imported lazily so that
`import magref` (and `magref.composition`) stays free of torch/diffusers until they are needed;
diffusers also resolves saved components such as `["magref", "FlowUniPCScheduler"]` through
this module's attributes.
"""

__version__ = "0.1.0"

_LAZY = {
    "MagrefPipeline": "magref.pipeline",
    "MagrefPipelineOutput": "magref.pipeline",
    "FlowUniPCScheduler": "magref.schedulers",
    "FlowDPMSolverScheduler": "magref.schedulers",
    "compose_references": "magref.composition",
    "RegionLayout": "magref.composition",
    "Composition": "magref.composition",
}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'magref' has no attribute {name!r}")


__all__ = ["__version__", *_LAZY]
