"""KFP v2 lightweight components: one module per pipeline step.

Each component is a thin shell with in-body imports around a plain, typed, tested function of the
``mlstack`` package; its ``base_image`` is the project's training image, which already has kfp.
"""
