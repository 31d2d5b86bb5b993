"""What the operator configures: the environment and the bindings file. Its modules:

- :mod:`.settings`: the environment, read and validated once into a frozen ``Settings`` (the only
  reader of ``os.environ``)
- :mod:`.bindings`: the model: which Key Vault secret feeds which data source or Fabric connection,
  and how (``Binding``, ``Target``, ``TargetMatch``, ``BindingSet``)
- :mod:`.bindings_file`: the bindings file read, parsed and strictly validated into a ``BindingSet``
- :mod:`.bindings_advice`: what ``bindings check`` says of a valid binding its source may still refuse
"""
