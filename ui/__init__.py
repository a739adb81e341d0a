"""The Gradio app's tabs, one module per tab; ``app.py`` assembles them.

Each module keeps its work in plain functions (tested without a browser) and imports
Gradio only inside its ``build_*`` function.
"""
