"""Many inputs: planning where each goes (``plan``) and running them (``local``, ``ray``,
``stores``).

Import the modules themselves. An engine plans with :mod:`.plan` (output names come from
:mod:`sam_deblur_cli.naming`, as for a single image) and deblurs each job with
``Deblurrer.new_record`` + ``Deblurrer.deblur_into``, as :func:`.local.run_batch` does on
this machine.
"""
