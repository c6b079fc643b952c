# Sphinx configuration for the accel-daemon documentation.
project = 'accel-daemon'
copyright = 'accel-daemon developers'
master_doc = 'index'
exclude_patterns = ['_build']
html_theme = 'alabaster'
