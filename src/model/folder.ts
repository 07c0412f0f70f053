/**
 * Which ONNX file a path means: the file itself, or for a model folder the decoder named by
 * genai_config.json (`model.decoder.filename`), else the folder's only *.onnx file.
 */
import { readdir, stat } from "node:fs/promises";
import { join, relative, resolve, sep } from "node:path";
import { z } from "zod";
import { IteraError } from "../errors.js";
import { readModelJson } from "./json-file.js";

// Only what locating the file needs; the full format is src/model/genai-config.ts.
const decoderFileSchema = z.looseObject({
  model: z.looseObject({ decoder: z.looseObject({ filename: z.string().min(1) }) }),
});

export interface ModelFile {
  /** Absolute path of the .onnx file. */
  onnxPath: string;
  /** The model folder, when the path given was a folder. */
  folder?: string;
  /** How the file was chosen. */
  via: "file" | "genai_config.json" | "only .onnx in folder";
}

/** Resolve a `model.onnx | model folder` argument to the ONNX file, with one clear error when there is none. */
export async function locateModelFile(path: string): Promise<ModelFile> {
  const abs = resolve(path);
  const info = await stat(abs).catch((e: NodeJS.ErrnoException) => {
    throw new IteraError(`no such model file or folder: ${path}`, {
      where: abs,
      fix: "pass the path of an .onnx file or of a model folder (genai_config.json + the .onnx file)",
      cause: e,
    });
  });
  if (!info.isDirectory()) return { onnxPath: abs, via: "file" };

  const configPath = join(abs, "genai_config.json");
  const config = await readModelJson(configPath, decoderFileSchema, {
    optional: true,
    fix: "set model.decoder.filename to the folder's .onnx file (onnxruntime-genai's format, docs/model-folder.md)",
  });
  if (config) {
    const filename = config.model.decoder.filename;
    const onnxPath = resolve(abs, filename);
    const rel = relative(abs, onnxPath);
    if (rel.startsWith(`..${sep}`) || rel === "..")
      throw new IteraError(`model.decoder.filename "${filename}" points outside the model folder`, {
        where: configPath,
        fix: "name a file inside the folder",
      });
    const exists = await stat(onnxPath).then(
      (s) => s.isFile(),
      () => false,
    );
    if (!exists)
      throw new IteraError(`genai_config.json names the decoder "${filename}", which is not in the folder`, {
        where: configPath,
        fix: `copy ${filename} into the folder or correct model.decoder.filename`,
      });
    return { onnxPath, folder: abs, via: "genai_config.json" };
  }

  const onnxFiles = (await readdir(abs)).filter((f) => f.endsWith(".onnx")).sort();
  if (onnxFiles.length === 1)
    return { onnxPath: join(abs, onnxFiles[0]!), folder: abs, via: "only .onnx in folder" };
  throw new IteraError(
    onnxFiles.length === 0
      ? "the folder holds no model: no genai_config.json and no .onnx file"
      : `the folder holds ${onnxFiles.length} .onnx files (${onnxFiles.join(", ")}) and no genai_config.json to choose one`,
    {
      where: abs,
      fix:
        onnxFiles.length === 0
          ? "pass a model folder (genai_config.json + the .onnx file) or an .onnx file"
          : "pass one .onnx file, or add a genai_config.json naming model.decoder.filename",
    },
  );
}
