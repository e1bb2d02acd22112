"""Text conditioning: prompts through a pipeline's text encoders and the prompt cache (``prompts``), and the label
encoder of ``--label-prompts`` (``labels``)."""
