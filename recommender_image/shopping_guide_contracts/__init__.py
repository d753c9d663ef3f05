"""The documents the operator and the recommender image exchange.

Both sides import these modules, so neither can drift from the other. They depend on the
standard library only: the operator image carries no numpy.
"""
