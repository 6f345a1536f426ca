"""lm-eval task YAMLs shipped with dynbench, and the code that builds their documents offline.

lm-eval imports this package when it resolves the tasks' ``!function`` hooks, so importing it also
registers the ``dynbench`` lm-eval model (when lm-eval is installed). That lets lm-eval's own
``lm_eval`` script run ``--model dynbench`` on tasks given by path (``--tasks <this folder>`` or
``--tasks <file>.yaml``), which lm-eval 0.4.13 resolves before it builds the model; it has no other
way to find a model that it does not ship.
"""

import importlib.util

if importlib.util.find_spec("lm_eval") is not None:
    import dynbench.integrations.lm_eval  # noqa: F401  — registers the "dynbench" model
