"""Many inputs: planning where each goes (``plan``), sending each to its engine
(``dispatch.run_jobs``: photos here or on Ray, videos through :mod:`sam_deblur_cli.video`)
and running the photos (``local``, ``ray``, ``stores``).

Import the modules themselves. An engine plans with :mod:`.plan` (output names come from
:mod:`sam_deblur_cli.naming`, as for a single image) and deblurs each job with
``Deblurrer.new_record`` + ``Deblurrer.deblur_into``, as :func:`.local.run_job` does on
this machine; an input's failure becomes its record through :func:`.local.recording_failure`.
"""
