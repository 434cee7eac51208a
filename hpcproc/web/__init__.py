"""The web service: REST API and results pages over the LIMS (``hpcproc serve``).

- :mod:`.auth`: users, their visits, hashed tokens, the staff role;
- :mod:`.app`: the FastAPI application and its settings;
- :mod:`.api`: the JSON API (recipes, jobs, visits, attachments, live status);
- :mod:`.pages`: the HTML pages (a visit's jobs, a job with its plots, the submit form).
"""
