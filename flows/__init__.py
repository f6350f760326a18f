"""Prefect flows: the loop (``flows.loop.loop_flow``) and one round (``flows.loop.round_flow``)."""
