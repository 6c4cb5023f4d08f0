"""Directions: contrastive pairs, v_hack extraction and its held-out check, the V each source gives
(sources.py), the oracle-labelled hack rows' gradient and Rebound's concept direction."""
