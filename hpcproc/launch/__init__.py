"""Processing that starts by itself: scan messages from acquisition -> recorded, processed jobs.

- :mod:`.events`: the one internal scan event every message format is parsed into;
- :mod:`.gda` and :mod:`.bluesky`: the two message formats;
- :mod:`.messages`: telling them apart (and dead-letter reasons for what is neither);
- :mod:`.state`: what the launcher has seen and started, for idempotence across redeliveries;
- :mod:`.launcher`: scan event -> data collection, recipes, jobs, live and downstream runs;
- :mod:`.amqp`, :mod:`.stomp_source`, :mod:`.file_watch`: where events come from;
- :mod:`.feedback`: progress and results published back for acquisition to steer by.
"""
