// Loads a DICOM SEG the way a cornerstone viewer (OHIF) does, through dcmjs'
// Cornerstone Segmentation adapter, and prints what it made of it as JSON.
//
//   node tests/dcmjs_seg.js SEG_FILE SOURCES_JSON     (dcmjs found through NODE_PATH)
//
// SOURCES_JSON lists the source images in slice order: sopInstanceUid,
// seriesInstanceUid, rows, columns, imageOrientationPatient. The image ids
// are the SOP Instance UIDs. Prints {"labelmap": [segment numbers, slice by
// slice]} or, when dcmjs refuses the object, {"error": its message}.
"use strict";

const fs = require("fs");
const dcmjs = require("dcmjs");

const [segPath, sourcesPath] = process.argv.slice(2);
const sources = JSON.parse(fs.readFileSync(sourcesPath, "utf8"));
const byId = new Map(sources.map((source) => [source.sopInstanceUid, source]));

// The modules the adapter asks a cornerstone metadata provider for.
const metadataProvider = {
  get(type, imageId) {
    const source = byId.get(imageId);
    const orientation = source.imageOrientationPatient;
    switch (type) {
      case "imagePlaneModule":
        return { rowCosines: orientation.slice(0, 3), columnCosines: orientation.slice(3, 6) };
      case "generalSeriesModule":
        return { seriesInstanceUID: source.seriesInstanceUid };
      case "sopCommonModule":
        return { sopInstanceUID: source.sopInstanceUid };
      case "imagePixelModule":
        return { rows: source.rows, columns: source.columns };
      default:
        return undefined;
    }
  },
};

const bytes = fs.readFileSync(segPath);
const buffer = bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + bytes.byteLength);
const imageIds = sources.map((source) => source.sopInstanceUid);
let result;
try {
  const state = dcmjs.adapters.Cornerstone.Segmentation.generateToolState(imageIds, buffer, metadataProvider);
  result = { labelmap: Array.from(new Uint16Array(state.labelmapBufferArray[0])) };
} catch (error) {
  result = { error: error.message };
}
process.stdout.write(JSON.stringify(result));
