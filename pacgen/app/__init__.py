"""The app layer: a session object (`session.Studio`) with no view code, the conversions that make its data
into what a page shows (`views`), and one module per Gradio tab, which `app.py` assembles."""
