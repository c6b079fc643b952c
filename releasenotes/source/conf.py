# Sphinx configuration for the accel-daemon release notes (reno).
project = 'accel-daemon Release Notes'
copyright = 'accel-daemon developers'
extensions = ['reno.sphinxext']
master_doc = 'index'
exclude_patterns = ['_build']
html_theme = 'alabaster'
