# SPDX-License-Identifier: Apache-2.0
# Sphinx configuration for the accel-daemon documentation.
#
# Built by `tox -e docs` and by tests/unit/test_docs.py, both with
# warnings as errors (sphinx-build -W).

import warnings

# Listing the [privsep_accel] options imports oslo.privsep, which imports
# eventlet, which prints a deprecation notice at import.  The docs build
# never uses eventlet (nor does the daemon: accel_daemon.cmd.daemon
# filters the same notice).
warnings.filterwarnings('ignore', message=r'\s*Eventlet is deprecated')

extensions = [
    # `.. show-options::` renders the configuration reference from the
    # options themselves (configuration.rst).
    'oslo_config.sphinxext',
    # `.. autoprogram-cliff::` renders accel-image's commands and their
    # options from the cliff application (cli.rst).
    'cliff.sphinxext',
]

project = 'accel-daemon'
copyright = 'accel-daemon developers'
master_doc = 'index'
# examples/ holds code the pages include (literalinclude), not pages.
exclude_patterns = ['_build', 'examples']
html_theme = 'alabaster'
