"""Many inputs: planning where each goes (``plan``) and running them (``local``).

Import the modules themselves: ``plan`` sits below the Deblurrer (which names outputs with
it), ``local`` above it (it runs one). An engine plans with :mod:`.plan` and deblurs each
job with ``Deblurrer.new_record`` + ``Deblurrer.deblur_into``, as :func:`.local.run_batch`
does on this machine.
"""
