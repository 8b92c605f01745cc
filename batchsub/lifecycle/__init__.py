"""From created to running: start jobs that exist, each exactly once, and wait until they run.

``statuses`` reads DLI's job statuses; ``start_rules`` is the one decision "start this job?"
(the starter acts on it, ``plan`` shows it); ``status_reader`` reads many jobs' statuses from
list pages in few calls; ``starter`` sends the run calls and records every step in the
``StartLedger``; ``waiter`` polls until each job is healthy, failed or out of time; ``waves``
splits a rollout into waves and holds the rest after too many failures. ``rollout`` wires
them behind the submitter (``--start``, ``--wait``: each job started once it exists, its
report row written once its wait ended), as ``options`` asks, and ``wave_run`` sends a
finite source wave by wave. The apply work lives here too: ``update_fields``,
``detail_dialect``, ``apply_plan``, ``stopper``, ``updater``, ``pruner``.
"""
