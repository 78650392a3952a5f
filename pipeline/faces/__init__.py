"""Face geometry for preprocessing: landmark backends, the mediapipe → iBUG-68 mapping, the fixed clip crop and
the landmark 3DMM coefficients (method.md §2).

Submodules (imported explicitly; `landmarks` pulls in mediapipe / face_alignment only when a backend is built):
- `pipeline.faces.landmarks` — `FaceTrack`, `make_backend`, iBUG index groups;
- `pipeline.faces.mediapipe68` — `MEDIAPIPE_TO_68`, `mediapipe_to_68`, `TEMPLATE_68`;
- `pipeline.faces.crop` — `smooth_boxes`, `fixed_crop`, `apply_crop`, `transform_landmarks`;
- `pipeline.faces.coeffs` — `fit_pose`, `ExpressionBasis`, `coefficients` (73-d layout), `mouth_opening`.
"""
