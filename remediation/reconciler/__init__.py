"""The reconciler: observe, ask the safety core, act. The healer (entry points, targets), the
resolver (bindings to targets), the refresher (datasets and their refreshes), a run's state and
its report; one module per target kind behind one seam (:mod:`.targets`).
"""
