"""An embedded, TensorFlow-Serving-compatible model server: a dev/test stand-in.

Production serves models with the real ``tensorflow/serving`` binary. No TF Serving
binary (nor Docker) is available where ctrain is developed and tested, so this package
speaks the same protocols over the same model directory, letting the same client code
(``tensorflow_serving.apis`` stubs, REST calls) run against either. It is *not* a
ctrain service and is never deployed.

Run it like ``tensorflow_model_server``::

    python -m ctrain.modelserver --model_config_file=models.config \\
        --port=8500 --rest_api_port=8501 \\
        [--model_config_file_poll_wait_seconds=N] \\
        [--allow_version_labels_for_unavailable_models]
    python -m ctrain.modelserver --model_name=m --model_base_path=/abs/path --port=8500

Reproduced behaviour (file references are to the tensorflow/serving sources):

* Config: ``ModelServerConfig`` text proto (``model_config_list`` only), validation
  (unique names, absolute base paths, platform ``tensorflow``); version policies
  ``latest{num_versions}`` (default latest 1), ``specific``, ``all`` over the integer
  sub-directories of base_path, which is re-polled (``--file_system_poll_wait_seconds``,
  default 1 s) so new version directories are picked up as TF Serving does.
* Lifecycle: START -> LOADING -> AVAILABLE | END(error), UNLOADING -> END; loads run on a
  background thread after ``HandleReloadConfigRequest`` returns (new *models* are waited
  for, as TF Serving does); availability-preserving unloads; removed models unload;
  END versions remain in ``GetModelStatus``.
* Labels: checked before anything loads; may only name AVAILABLE versions, else
  FAILED_PRECONDITION "Request to assign label to version N of model M, which is not
  currently available for inference" and the reload changes nothing. Hence labels in
  the *startup* config fail unless ``--allow_version_labels_for_unavailable_models``
  (which allows new labels on unavailable versions, never moving an existing label onto
  one).
* gRPC ``PredictionService`` (Predict, Classify, Regress, GetModelMetadata) and
  ``ModelService`` (GetModelStatus, HandleReloadConfigRequest); ``model_spec`` by
  version, version_label or neither (latest AVAILABLE). Error codes and texts:
  "Servable not found for request: Specific(m, 3)" / "Latest(m)" (NOT_FOUND),
  "Unrecognized servable version label: x" (INVALID_ARGUMENT), "Could not find version
  N of model m" (NOT_FOUND), input/output alias and signature errors of predict_util.cc.
* REST: ``/v1/models/{m}[/versions/{v}|/labels/{l}]`` status, ``.../metadata``,
  ``...:predict`` (``instances``/``inputs``, ``{"b64"}``), ``:classify``, ``:regress``;
  ``{"error": ...}`` with TF Serving's status->HTTP mapping (NOT_FOUND 404,
  INVALID_ARGUMENT/FAILED_PRECONDITION 400, ...).
* Metrics: ``/monitoring/prometheus/metrics`` (and ``/metrics``), always on (TF Serving
  needs ``--monitoring_config_file``), with TF Serving's ``:tensorflow:serving:*`` names
  plus ``ctrain_modelserver_*`` counters/histograms by model, version, api.

Deliberate differences:

* Classify/Regress accept any signature with one DT_STRING input (serialized
  tf.Examples), e.g. ``serving_default(examples) -> {"probabilities"}``. A signature
  with TF Serving's canonical keys (input ``inputs``; outputs ``classes``/``scores`` or
  ``outputs``) is handled as TF Serving does. Otherwise the single output is used:
  Regress returns it; Classify returns classes ``["0", "1"]`` with scores ``[1-p, p]``
  for a ``[batch]``/``[batch, 1]`` probability, or classes ``"0".."n-1"`` for
  ``[batch, n]``. Real TF Serving rejects such signatures (FAILED_PRECONDITION "No
  classification inputs found in SignatureDef"); ``--strict_classify_regress`` does too.
* Not implemented: MultiInference (UNIMPLEMENTED), SessionService, request logging,
  batching, ``model_config_list_root_dir``, load retries, non-TensorFlow platforms,
  cloud file systems. ``--rest_api_port=0`` disables REST, as upstream.
"""
