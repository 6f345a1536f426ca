"""lm-eval task YAMLs shipped with dynbench, and the code that builds their documents offline.

lm-eval finds these tasks by name because dynbench's startup hook adds this folder to every
lm-eval ``TaskManager`` (src/dynbench/integrations/lm_eval_registration.py). lm-eval imports this
package when it resolves the tasks' ``!function`` hooks, so importing it also registers the
``dynbench`` model (when lm-eval is installed): a fallback for a process without the startup hook
(a source tree on ``PYTHONPATH``, ``python -S``), where ``lm_eval --model dynbench --tasks <this
folder or one of its YAML files>`` still works, since lm-eval 0.4.13 resolves tasks given by path
before it builds the model.
"""

import importlib.util

if importlib.util.find_spec("lm_eval") is not None:
    import dynbench.integrations.lm_eval  # noqa: F401  — registers the "dynbench" model
