"""Pure builders: one validated `Guide` in, the manifest of one owned object out.

No I/O here; every builder is tested on plain dicts. Names are deterministic (a function of
the guide's name, and for a training Job of the run it serves), so reconcile can find every
child again without remembering anything.
"""
