"""The YAML configs of every command (the one home of every default).

A package so that Hydra finds them through its search path (``pkg://seglearn.configs``) and a
wheel ships them; :mod:`seglearn.paths` is how code reads them. ``configs/`` at the repository
root is a symlink to this folder.
"""
