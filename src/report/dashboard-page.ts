import { escapeHtml, htmlPage, scriptJson } from "./html.js";

/** The dashboard's MQTT connection as the page shows it (the URL never carries a password). */
export interface DashboardBroker {
  state: "connecting" | "connected" | "unreachable";
  url: string;
  /** Why it is unreachable (the connection error), null otherwise. */
  error: string | null;
}

/** A finished benchmark in the dashboard's history; `report` is the page's relative link to its report. */
export interface DashboardJob {
  jobId: string;
  model: string;
  startedMs: number;
  finishedMs: number;
  devices: number;
  succeeded: number;
  /** Its energy figures came from a simulated meter. */
  simulated: boolean;
  report: string;
}

/** The broker line's text, the same on the server-rendered page and after each update. */
export function brokerText(b: DashboardBroker): string {
  if (b.state === "connected") return `broker connected: ${b.url}`;
  if (b.state === "connecting") return `connecting to the broker: ${b.url}`;
  return `broker unreachable: ${b.url}${b.error ? ` (${b.error})` : ""}; retrying`;
}

/**
 * The live fleet dashboard (`itera fleet dashboard`): tables of devices and finished benchmarks that
 * the page's script fills from the server's event stream (`events`, same origin; the page's own CSP
 * allows only that connection). Device strings are written with textContent, never parsed as HTML.
 */
const SCRIPT = `
var cfg=JSON.parse(document.getElementById("cfg").textContent);
var devices={};var jobs=cfg.jobs;var tb=document.querySelector("#devices tbody");var q=location.search;
function $(id){return document.getElementById(id);}
function f(x,d){return x===null||x===undefined?"\\u2013":Number(x).toFixed(d);}
function ago(ms){if(!ms)return "\\u2013";var s=Math.max(0,Math.round((Date.now()-ms)/1000));return s+" s ago";}
function utc(ms){return new Date(ms).toISOString().slice(0,19).replace("T"," ")+" UTC";}
function sim(m){return typeof m==="string"&&/-simulated$/.test(m);}
function row(cells,cls){var tr=document.createElement("tr");cells.forEach(function(v,i){var td=document.createElement("td");if(v instanceof Node)td.appendChild(v);else td.textContent=v;if(cls[i])td.className=cls[i];tr.appendChild(td);});return tr;}
function render(){var ids=Object.keys(devices).sort();tb.textContent="";ids.forEach(function(id){var d=devices[id];
var tr=row([d.device,d.state,d.version||"\\u2013",d.profile||"\\u2013",ago(d.last_seen_ms),f(d.temp_c,1),f(d.tok_s,2),d.mj_per_token===null?"\\u2013":f(d.mj_per_token,2)+(d.method?" ("+d.method+")":"")],["","","","","","n","n",sim(d.method)?"n sim":"n"]);
tr.dataset.device=d.device;tr.className="state-"+d.state;tb.appendChild(tr);});
$("count").textContent=String(ids.length);
var s=ids.filter(function(id){return sim(devices[id].method);}).length>0||jobs.some(function(j){return j.simulated;});$("simulated").hidden=!s;}
function renderJobs(){var body=document.querySelector("#jobs tbody");body.textContent="";jobs.forEach(function(j){var a=document.createElement("a");a.href=j.report+q;a.textContent=j.jobId;
var tr=row([a,j.model,utc(j.finishedMs),j.succeeded+"/"+j.devices,j.simulated?"simulated meter":"measured or none"],["","","","n",j.simulated?"sim":""]);tr.dataset.job=j.jobId;body.appendChild(tr);});
$("no-jobs").hidden=jobs.length>0;$("jobs").hidden=jobs.length===0;render();}
function renderBroker(b){var p=$("broker");p.dataset.state=b.state;p.className=b.state==="unreachable"?"sim":"muted";
p.textContent=b.state==="connected"?"broker connected: "+b.url:b.state==="connecting"?"connecting to the broker: "+b.url:"broker unreachable: "+b.url+(b.error?" ("+b.error+")":"")+"; retrying";}
renderBroker(cfg.broker);renderJobs();
var es=new EventSource("events"+q);
es.addEventListener("snapshot",function(e){devices={};JSON.parse(e.data).forEach(function(d){devices[d.device]=d;});render();$("conn").textContent="live";});
es.addEventListener("device",function(e){var d=JSON.parse(e.data);devices[d.device]=d;render();});
es.addEventListener("broker",function(e){renderBroker(JSON.parse(e.data));});
es.addEventListener("jobs",function(e){jobs=JSON.parse(e.data);renderJobs();});
es.onerror=function(){$("conn").textContent="reconnecting to the dashboard";};
setInterval(render,5000);
`;

export function dashboardPage(o: { fleet: string; broker: DashboardBroker; jobs: DashboardJob[] }): string {
  const title = `Fleet ${o.fleet}: live dashboard`;
  const cls = o.broker.state === "unreachable" ? "sim" : "muted";
  const body = [
    `<h1>${escapeHtml(title)}</h1>`,
    `<p id="broker" class="${cls}" data-state="${o.broker.state}">${escapeHtml(brokerText(o.broker))}</p>`,
    '<p class="sim" id="simulated" hidden>simulated: energy figures marked -simulated were read from a simulated meter (itera fleet simulate), not measured on a device</p>',
    '<p class="muted"><span id="count">0</span> device(s); stream: <span id="conn">connecting</span></p>',
    '<table id="devices"><thead><tr><th>device</th><th>state</th><th>version</th><th>profile</th><th>last seen</th><th>temp °C</th><th>recent tokens/s</th><th>mJ/token</th></tr></thead><tbody></tbody></table>',
    "<h2>Finished benchmarks</h2>",
    `<p class="muted" id="no-jobs">no finished benchmark of this fleet yet (itera fleet bench --fleet ${escapeHtml(o.fleet)})</p>`,
    '<table id="jobs" hidden><thead><tr><th>job (report)</th><th>model</th><th>finished</th><th>succeeded</th><th>energy</th></tr></thead><tbody></tbody></table>',
    `<script type="application/json" id="cfg">${scriptJson(o)}</script>`,
  ].join("\n");
  return htmlPage({ title, body, script: SCRIPT, connect: "'self'" });
}

/** The page for a report link whose job is not (or no longer) in the history: says so, never blank. */
export function missingReportPage(o: { fleet: string; jobId: string; db: string | undefined }): string {
  const title = `No report for ${o.jobId}`;
  const where = o.db ? `the fleet database ${o.db}` : "this dashboard (started without a fleet database)";
  return htmlPage({
    title,
    body: [
      `<h1>${escapeHtml(title)}</h1>`,
      `<p class="sim" id="error">no finished benchmark '${escapeHtml(o.jobId)}' of fleet ${escapeHtml(o.fleet)} in ${escapeHtml(where)}</p>`,
      "<p>fix: open the report from the dashboard's list of finished benchmarks, or list the ids with <code>itera fleet history --json</code></p>",
      '<p><a id="back" href="../../">back to the dashboard</a></p>',
    ].join("\n"),
    // The way back keeps the access token the report was opened with.
    script: 'document.getElementById("back").href="../../"+location.search;',
  });
}
