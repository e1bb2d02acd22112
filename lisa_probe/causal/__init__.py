"""From correlation to cause: where in the image each site of the side branch pushes the prediction (``maps``) and
what the generated image loses when a site is gated off during part of the sampling trajectory
(``interventions``)."""
