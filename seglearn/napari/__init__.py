"""napari plugin: open seglearn datasets and predictions, save labels, train / predict / suggest.

Installed with ``pip install 'seglearn[napari]'`` (manifest ``napari.yaml``, entry point
``napari.manifest``). The pure logic lives in :mod:`seglearn.napari.layers` (no napari import);
:mod:`seglearn.napari.widget` is the dock widget. See ``docs/napari.md``.
"""
