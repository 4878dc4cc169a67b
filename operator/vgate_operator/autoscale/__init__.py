"""Elastic worker fleets: the autoscaling spec, the pure policy, and the loop that runs it.

The policy (:mod:`.policy`) is a pure function from observed load to a replica count; the
operator's loop (:mod:`.loop`) and ``vgate dev --autoscale`` both drive it, so a fleet on a
cluster and the local stack scale by the same rules.
"""
