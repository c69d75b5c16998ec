"""UI-only helpers of app.py and pages/: Streamlit wiring, no science (that is :mod:`lcd_core`).

- :mod:`app_ui.state`: settings, cached screen / model loaders, uploads, the session's screen and run;
- :mod:`app_ui.jobs`: the background job runner (worker threads, stopped at interpreter exit);
- :mod:`app_ui.results`: predictions, CLIPR, the reference embedding and baselines, computed in jobs;
- :mod:`app_ui.training`: trainings in their own processes (:func:`lcd_core.backends.submit_detached`);
- :mod:`app_ui.widgets`: the sidebar frame, run picker, error boxes and exports.
"""
