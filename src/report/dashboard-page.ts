import { escapeHtml, htmlPage, scriptJson } from "./html.js";

/** The dashboard's MQTT connection as the page shows it (the URL never carries a password). */
export interface DashboardBroker {
  state: "connecting" | "connected" | "unreachable";
  url: string;
  /** Why it is unreachable (the connection error), null otherwise. */
  error: string | null;
}

/** What every finished job in the dashboard's list has, whatever its type. */
interface DashboardJobBase {
  jobId: string;
  /** benchmark, tune: the model; update: the version (and A/B variant) it installs. */
  subject: string;
  startedMs: number;
  finishedMs: number;
  devices: number;
  /** Devices that succeeded (an update: that run the new version, UPDATED). */
  succeeded: number;
  /** Its energy figures came from a simulated meter. */
  simulated: boolean;
  /** What matters for its type, one line each, as the page writes it. */
  summary: string[];
  /** The page's relative link to its report (benchmarks; null for other types). */
  report: string | null;
}

/** A device's pick in a finished tune job (null figures: not measured, or it did not succeed). */
export interface DashboardTunePick {
  device: string;
  status: string;
  /** `precision, N t[, decode]`; null: no result. */
  pick: string | null;
  tok_s: number | null;
  mj_per_token: number | null;
  method: string | null;
  /** Its tuned.json was written on the device (null: no result). */
  applied: boolean | null;
  /** Why it has no pick. */
  details: string | null;
}

/** A finished job in the dashboard's list: benchmark, update or tune, with its type's figures. */
export type DashboardJob = DashboardJobBase &
  (
    | {
        type: "benchmark";
        report: string;
        /** Lowest and highest generation tokens/s (and mJ/token) of its devices; null: none. */
        tok_s: [number, number] | null;
        mj_per_token: [number, number] | null;
      }
    | {
        type: "update";
        version: string;
        variant: string | null;
        /** The rollout's result (updated, canary-failed, stopped, incomplete). */
        result: string;
        /** Devices per outcome: UPDATED, ROLLED_BACK, REJECTED, OFFLINE, FAILED, SKIPPED, ... */
        outcomes: Record<string, number>;
        rolledBack: string[];
      }
    | { type: "tune"; picks: DashboardTunePick[] }
  );

/** One telemetry message's figures as a device's sparklines draw them (ts: epoch ms). */
export interface DashboardPoint {
  ts: number;
  cpu_pct: number;
  tok_s: number | null;
  mj_per_token: number | null;
}

/** One device's execution of a job in flight (`SENT`: requested, not yet answered by the device). */
export interface DashboardRunningJob {
  jobId: string;
  /** `benchmark`, `update` or `tune`; null when the request was not seen (the dashboard started later). */
  type: string | null;
  device: string;
  status: string;
  /** The device's progress text. */
  details: string | null;
  sinceMs: number;
}

/** The broker line's text, the same on the server-rendered page and after each update. */
export function brokerText(b: DashboardBroker): string {
  if (b.state === "connected") return `broker connected: ${b.url}`;
  if (b.state === "connecting") return `connecting to the broker: ${b.url}`;
  return `broker unreachable: ${b.url}${b.error ? ` (${b.error})` : ""}; retrying`;
}

/**
 * The live fleet dashboard (`itera fleet dashboard`): tables of devices and jobs (running, finished) that
 * the page's script fills from the server's event stream (`events`, same origin; the page's own CSP
 * allows only that connection). Device strings are written with textContent, never parsed as HTML.
 */
const SCRIPT = `
var cfg=JSON.parse(document.getElementById("cfg").textContent);
var devices={};var jobs=cfg.jobs;var running=cfg.running;var SVG="http://www.w3.org/2000/svg";var tb=document.querySelector("#devices tbody");var q=location.search;
function $(id){return document.getElementById(id);}
function f(x,d){return x===null||x===undefined?"\\u2013":Number(x).toFixed(d);}
function ago(ms){if(!ms)return "\\u2013";var s=Math.max(0,Math.round((Date.now()-ms)/1000));return s+" s ago";}
function utc(ms){return new Date(ms).toISOString().slice(0,19).replace("T"," ")+" UTC";}
function sim(m){return typeof m==="string"&&/-simulated$/.test(m);}
function row(cells,cls){var tr=document.createElement("tr");cells.forEach(function(v,i){var td=document.createElement("td");if(v instanceof Node)td.appendChild(v);else td.textContent=v;if(cls[i])td.className=cls[i];tr.appendChild(td);});return tr;}
function spark(pts,key){var v=pts.map(function(p){return p[key];}).filter(function(x){return x!==null&&x!==undefined;});
if(v.length<2){var n=document.createElement("span");n.className="muted";n.textContent="\\u2013";return n;}
// A steady figure is a level line in the middle, not one lying on the floor.
var lo=Math.min.apply(null,v),hi=Math.max.apply(null,v),w=80,h=18,span=hi-lo||1;
var svg=document.createElementNS(SVG,"svg");svg.setAttribute("width",w);svg.setAttribute("height",h);svg.setAttribute("viewBox","0 0 "+w+" "+h);svg.setAttribute("class","spark");svg.dataset.metric=key;
var t=document.createElementNS(SVG,"title");t.textContent=key+": "+v.length+" points, "+lo.toFixed(2)+" to "+hi.toFixed(2);svg.appendChild(t);
var pl=document.createElementNS(SVG,"polyline");pl.setAttribute("fill","none");pl.setAttribute("stroke","currentColor");pl.setAttribute("stroke-width","1.2");
pl.setAttribute("points",v.map(function(x,i){return (i*(w-2)/(v.length-1)+1).toFixed(1)+","+(hi===lo?h/2:h-1-(x-lo)*(h-2)/span).toFixed(1);}).join(" "));svg.appendChild(pl);return svg;}
function render(){var ids=Object.keys(devices).sort();tb.textContent="";ids.forEach(function(id){var d=devices[id];
var p=d.points||[];var tr=row([d.device,d.state,d.version||"\\u2013",d.profile||"\\u2013",ago(d.last_seen_ms),f(d.temp_c,1),f(d.tok_s,2),d.mj_per_token===null?"\\u2013":f(d.mj_per_token,2)+(d.method?" ("+d.method+")":""),spark(p,"tok_s"),spark(p,"mj_per_token"),spark(p,"cpu_pct")],["","","","","","n","n",sim(d.method)?"n sim":"n","","",""]);
tr.dataset.device=d.device;tr.className="state-"+d.state;tb.appendChild(tr);});
$("count").textContent=String(ids.length);
var s=ids.filter(function(id){return sim(devices[id].method);}).length>0||jobs.some(function(j){return j.simulated;});$("simulated").hidden=!s;}
function lines(xs){var d=document.createElement("div");xs.forEach(function(x){var l=document.createElement("div");l.textContent=x;d.appendChild(l);});return d;}
function renderJobs(){var body=document.querySelector("#jobs tbody");body.textContent="";jobs.forEach(function(j){var id=j.jobId;if(j.report){id=document.createElement("a");id.href=j.report+q;id.textContent=j.jobId;}
var energy=j.type==="update"?"\u2013":j.simulated?"simulated meter":"measured or none";
var tr=row([id,j.subject,utc(j.finishedMs),j.succeeded+"/"+j.devices,energy,j.type,lines(j.summary)],["","","","n",j.simulated?"sim":"","",""]);tr.dataset.job=j.jobId;tr.dataset.type=j.type;body.appendChild(tr);});
$("no-jobs").hidden=jobs.length>0;$("jobs").hidden=jobs.length===0;render();}
function renderRunning(){var body=document.querySelector("#running tbody");body.textContent="";running.forEach(function(j){
var tr=row([j.jobId,j.type||"\\u2013",j.device,j.status,j.details||"\\u2013",ago(j.sinceMs)],["","","","","",""]);tr.dataset.job=j.jobId;tr.dataset.device=j.device;body.appendChild(tr);});
$("no-running").hidden=running.length>0;$("running").hidden=running.length===0;}
function renderBroker(b){var p=$("broker");p.dataset.state=b.state;p.className=b.state==="unreachable"?"sim":"muted";
p.textContent=b.state==="connected"?"broker connected: "+b.url:b.state==="connecting"?"connecting to the broker: "+b.url:"broker unreachable: "+b.url+(b.error?" ("+b.error+")":"")+"; retrying";}
renderBroker(cfg.broker);renderJobs();renderRunning();
var es=new EventSource("events"+q);
es.addEventListener("snapshot",function(e){devices={};JSON.parse(e.data).forEach(function(d){devices[d.device]=d;});render();$("conn").textContent="live";});
es.addEventListener("device",function(e){var d=JSON.parse(e.data);devices[d.device]=d;render();});
es.addEventListener("running",function(e){running=JSON.parse(e.data);renderRunning();});
es.addEventListener("broker",function(e){renderBroker(JSON.parse(e.data));});
es.addEventListener("jobs",function(e){jobs=JSON.parse(e.data);renderJobs();});
es.onerror=function(){$("conn").textContent="reconnecting to the dashboard";};
setInterval(function(){render();renderRunning();},5000);
`;

export function dashboardPage(o: {
  fleet: string;
  broker: DashboardBroker;
  jobs: DashboardJob[];
  running: DashboardRunningJob[];
}): string {
  const title = `Fleet ${o.fleet}: live dashboard`;
  const cls = o.broker.state === "unreachable" ? "sim" : "muted";
  const body = [
    `<h1>${escapeHtml(title)}</h1>`,
    `<p id="broker" class="${cls}" data-state="${o.broker.state}">${escapeHtml(brokerText(o.broker))}</p>`,
    '<p class="sim" id="simulated" hidden>simulated: energy figures marked -simulated were read from a simulated meter (itera fleet simulate), not measured on a device</p>',
    '<p class="muted"><span id="count">0</span> device(s); stream: <span id="conn">connecting</span></p>',
    '<table id="devices"><thead><tr><th>device</th><th>state</th><th>version</th><th>profile</th><th>last seen</th><th>temp °C</th><th>recent tokens/s</th><th>mJ/token</th><th>tokens/s trend</th><th>mJ/token trend</th><th>CPU % trend</th></tr></thead><tbody></tbody></table>',
    "<h2>Running jobs</h2>",
    `<p class="muted" id="no-running">no job running on this fleet (itera fleet bench / update / tune --fleet ${escapeHtml(o.fleet)})</p>`,
    '<table id="running" hidden><thead><tr><th>job</th><th>type</th><th>device</th><th>status</th><th>progress</th><th>since</th></tr></thead><tbody></tbody></table>',
    "<h2>Finished jobs</h2>",
    `<p class="muted" id="no-jobs">no finished job of this fleet yet (itera fleet bench / update / tune --fleet ${escapeHtml(o.fleet)})</p>`,
    '<table id="jobs" hidden><thead><tr><th>job (benchmark: report)</th><th>model or version</th><th>finished</th><th>succeeded</th><th>energy</th><th>type</th><th>outcome</th></tr></thead><tbody></tbody></table>',
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
      "<p>fix: open the report from a benchmark's link in the dashboard's list of finished jobs, or list the ids with <code>itera fleet history --json</code></p>",
      '<p><a id="back" href="../../">back to the dashboard</a></p>',
    ].join("\n"),
    // The way back keeps the access token the report was opened with.
    script: 'document.getElementById("back").href="../../"+location.search;',
  });
}
