"""The built-in segmenter: eight structures from HU and anatomy, no weights.

It needs no model files and no GPU, runs in seconds on a CPU, and gives every
segnode installation a working pipeline (SEG, SR, body composition) before a
network is configured. Every rule is anatomy measured in mm (taken from the
volume's affine), so the same code serves 0.8 mm and 3 mm CT:

* **body**: the soft-tissue parts of the scan (trunk, arms), found after
  an opening that breaks the thin shells of the table and cushions, each
  part being mostly soft tissue; holes filled slice by slice.
* **lungs**: air inside the body (< -400 HU) in large 3-D components of
  lung density (the median below -600 HU, few voxels of pure gas; bowel
  gas is pure gas), or connected to the airway; split into left and right
  by the patient's midline, eroding a component that spans both sides
  until it separates.
* **airway**: an air tube in the midline tracked down slice by slice from
  its top until it divides into two (the carina), then each main bronchus
  until it divides again, leaks into the lung or passes 50 mm; accepted only
  when the carina is seen, and cut 130 mm above it (below the larynx).
* **skeleton**: voxels above a bone edge (200 HU on 1 mm voxels, 130 HU
  on 3 mm ones, where partial volume dims thin cortex), less pools of
  contrast medium (solid, at least 12 mm across, brighter than their
  surroundings, which are not bone), in parts that hold cortical density
  and are at least 4 mm thick once their marrow is filled (a rib with a
  thin cortex is; plaques and calcified cartilage plates are not); then the
  inside of each bone, enclosed in its slice once gaps of up to 12 mm in
  the cortex are bridged: whole where small or fatty (marrow), elsewhere
  its voxels denser than 60 HU (trabecular bone), so that the spinal canal
  and vessel lumens (water, blood) stay out; such voxels that form a layer
  at least 3 times wider than tall between endplates are an intervertebral
  disc ringed by osteophytes and stay out too; a slice whose cortex has a
  gap too wide to bridge takes its inside from the slices 2 mm above and
  below; then holes under 1 cm2 left in a bone are marrow. A calcified
  artery wall that touches bone and passed with it is taken out: it lines
  a lumen, a round region of blood or contrast 8 to 40 mm across within
  80 mm of the spinal canal (aorta, iliac arteries), tracked slice by
  slice as a tube at least as long as it is wide; what lies in the wall
  (thin shells, and bone within the 2 mm of intima and media) goes, the
  vertebra's thick bone beyond stays.
  Last, filled voxels below the bone edge on the outline go: the cortex
  is the bone's surface.
* **subcutaneous fat, visceral fat, skeletal muscle**: the body-composition
  HU windows (fat -190 to -30, muscle -29 to 150) split by compartment:
  subcutaneous fat is the fat reached from the skin without crossing the
  muscle wall (its gaps closed). Under it, the trunk's visceral space is
  what lies deeper than the wall (15 mm: abdominal muscles, ribs) and
  outside the back muscles (behind the spinal canal, within 70 mm of it):
  organs, bowel, vessels, mediastinum. Skeletal muscle is the lean tissue
  under the subcutaneous fat outside that space (the wall, the back, the
  limbs), the spinal canal excepted; visceral fat is the fat inside it,
  below the top of the lungs and outside the space between them.

The label map is exclusive, so the body outline is the union of all labels
(the segmentation's ``outline``, "body", coded Entire body); label 1
("other_soft_tissue") holds the body voxels that no other structure claims:
organs, vessels, skin and the like, coded as what they are, soft tissue.

Orientation: the array is viewed (no copy) in a canonical order, axis 0 to
the head, axis 1 to the back, axis 2 to the patient's left, so "slice"
always means axial, "top" means cranial and "left" means the patient's
left, whatever the acquisition's orientation; the labels go back to the
volume's own order at the end.

Cost: after the body, everything runs inside the body's bounding box, and
morphology with large structuring elements (the body's opening, closing
the muscle wall and the bone cortex, the wall's depth) on a grid of about
2 mm, where it costs an eighth of the full-resolution work; thresholds,
hole filling and boundaries stay at full resolution. Labelling connected
regions was a third of the time: cc3d labels them, numbered as ndimage
numbers them but 2 to 5 times faster, in-slice regions as one 2-D image
of the stacked slices; each region set is labelled once: a mask's holes
serve both their filling and their sizes, and the lungs are components
of the internal air's labelling. In-slice erosion and dilation, and the
opening along the slices, combine shifted views of the array (10 times
faster than ndimage's). On bench/builtin_dice.py's 512x512x300 phantom:
3.3 s, against 4.5 s with ndimage's labelling (commit 1c22e66) and 8.7 s
before issue 13; on bench/e2e.py's (2 mm slices) 4.7 s against 6.0 s;
each pair run alternately, one core (the machine has two).

Modules, in the order the segmenter runs them:

* :mod:`~inference.builtin.segmenter`: :class:`BuiltinSegmenter`, which
  composes the parts below into one label map;
* :mod:`~inference.builtin.body`: the body outline and the air inside it;
* :mod:`~inference.builtin.airway`: trachea and main bronchi;
* :mod:`~inference.builtin.lungs`: left and right lung;
* :mod:`~inference.builtin.skeleton`: bone and marrow, with
  :mod:`~inference.builtin.vessel_walls` (calcified artery walls on bone)
  and :mod:`~inference.builtin.spinal_canal`;
* :mod:`~inference.builtin.composition`: fat and muscle by compartment;
* :mod:`~inference.builtin.morphology`: the coarse grid and in-slice
  morphology in mm; :mod:`~inference.builtin.components`: connected
  components (cc3d); :mod:`~inference.builtin.constants`: the HU and sizes
  that several parts share.
"""

from inference.builtin.segmenter import ALGORITHM, BuiltinSegmenter, segment_canonical

__all__ = ["ALGORITHM", "BuiltinSegmenter", "segment_canonical"]
