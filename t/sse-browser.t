# A real browser receives Server-Sent Events: headless Chromium opens the
# examples/05-sse-broadcaster page (served by bin/pagi-server), its EventSource
# connects to /events, the test publishes a message, and the DOM is read back
# over the DevTools protocol until the message and a clock event are there.
#
# DevTools runs over --remote-debugging-pipe (NUL-separated JSON on fds 3 and
# 4), so no port and no WebSocket client are needed: only core Perl.
# Skips when Chromium is missing, except under CI=true where it fails.
# CHROMIUM=/path/to/binary picks another browser binary.
use strict;
use warnings;
use utf8;
use Test::More;
use FindBin;
use lib "$FindBin::Bin/lib";
use PAGI::Test::Server qw(parse_responses);    # arms the per-file alarm; reset below
use PAGI::Test::Chromium qw(need_chromium start_browser stop_browser cdp browser_log);
use PAGI::Test::CLI qw(ROOT start_cli stop_cli http_raw stderr_of wait_until);
use Encode ();
use JSON::PP ();
use Time::HiRes qw(time sleep);

binmode Test::More->builder->$_, ':encoding(UTF-8)' for qw(output failure_output todo_output);

my $BROWSER_TIMEOUT = 20;    # seconds for Chromium to start and show the page
my $DOM_TIMEOUT     = 15;    # seconds for the events to reach the DOM

need_chromium();

# The whole file is bounded; exit (not the default SIGALRM death) so that the
# END blocks below still kill Chromium and the server.
alarm 90;
$SIG{ALRM} = sub { diag('sse-browser.t: timed out after 90 s'); exit 1 };

my $server;     # PAGI::Test::CLI child
my $browser;    # { pid, to, from, log, profile }

END {
    local $?;
    stop_browser($browser) if $browser;
    stop_cli($server, 5)   if $server;
}

# --- Server ----------------------------------------------------------------
$server = start_cli([ 'examples/05-sse-broadcaster/app.pl', '--quiet', '--no-access-log', '--env', 'production' ]);
ok($server->{ready}, 'the broadcaster example listens')
    or do { diag(stderr_of($server)); done_testing; exit };
my $port = $server->{port};
my $url  = "http://127.0.0.1:$port/";


$browser = start_browser($url);

# The page target Chromium opened for $url, attached as a flat session.
my $session;
my $attach_error = '';
wait_until(sub {
    my $targets = eval { cdp($browser, 'Target.getTargets', {}, undef, 2) };
    if (!$targets) { $attach_error = $@; return 0 }
    my ($page) = grep { $_->{type} eq 'page' && index($_->{url}, "127.0.0.1:$port") >= 0 }
        @{ $targets->{targetInfos} };
    return 0 unless $page;
    my $att = eval { cdp($browser, 'Target.attachToTarget', { targetId => $page->{targetId}, flatten => JSON::PP::true() }) };
    $attach_error = $@;
    $session = $att && $att->{sessionId};
    return defined $session;
}, $BROWSER_TIMEOUT);
ok(defined $session, "Chromium shows $url and DevTools attaches to it")
    or do { diag("last error: $attach_error"); diag("command: @{ $browser->{argv} }"); diag(browser_log($browser)); done_testing; exit };

# --- Publish once the browser's EventSource is subscribed ------------------
sub post_publish {
    my ($text) = @_;
    my $body = Encode::encode('UTF-8', $text);
    my ($r) = parse_responses(http_raw($port,
        "POST /publish HTTP/1.1\r\nHost: 127.0.0.1:$port\r\nContent-Type: text/plain; charset=utf-8\r\n"
        . "Content-Length: " . length($body) . "\r\nConnection: close\r\n\r\n$body", 5));
    return $r;
}

# Unique, and not ASCII: the engine must UTF-8 encode it for the browser.
my $text = sprintf 'browser check %d-%d café ✓', $$, int(rand 1e9);
my ($listeners, $last_answer) = (0, '');
wait_until(sub {
    my $r = post_publish($text);
    $last_answer = $r ? "$r->{status} $r->{body}" : '(no response)';
    $listeners = $r && $r->{status} == 202 && $r->{body} =~ /sent to (\d+) listeners/ ? $1 : 0;
    return $listeners >= 1 || (sleep(0.2), 0);
}, $BROWSER_TIMEOUT);
cmp_ok($listeners, '>=', 1, 'POST /publish reaches the browser\'s EventSource')
    or diag("last answer: $last_answer");

# --- Read the DOM ----------------------------------------------------------
# Each event becomes <li class="clock|message">kind: data</li> in #log.
my $EXPR = q{JSON.stringify(Array.from(document.querySelectorAll('#log li'), li => [li.className, li.textContent]))};
my ($items, $dom_error) = ([], '');
my $found = wait_until(sub {
    my $res = eval { cdp($browser, 'Runtime.evaluate', { expression => $EXPR, returnByValue => JSON::PP::true() }, $session) };
    if (!$res || $res->{exceptionDetails}) {
        $dom_error = $@ || JSON::PP->new->encode($res->{exceptionDetails});
        return 0;
    }
    $items = JSON::PP->new->decode($res->{result}{value} // '[]');    # characters: the JSON text is already decoded
    my $msg   = grep { $_->[0] eq 'message' && $_->[1] eq "message: $text" } @$items;
    my $clock = grep { $_->[0] eq 'clock' } @$items;
    return ($msg && $clock) || (sleep(0.2), 0);
}, $DOM_TIMEOUT);

my @messages = grep { $_->[0] eq 'message' } @$items;
my @clocks   = grep { $_->[0] eq 'clock' } @$items;
ok(scalar(grep { $_->[1] eq "message: $text" } @messages), 'the published message, with its non-ASCII characters, is in the DOM')
    or diag("DOM items: " . JSON::PP->new->canonical->encode($items) . ($dom_error ? "\nlast error: $dom_error" : ''));
ok(scalar(grep { $_->[1] =~ /^message: welcome \(\d+ listening\)$/ } @messages), 'so is the welcome message sent at connect');
ok(@clocks >= 1, 'and at least one clock event')
    or diag("DOM items: " . JSON::PP->new->canonical->encode($items));
like($clocks[0][1], qr/^clock: \w{3} \w{3} +\d+ \d\d:\d\d:\d\d \d{4}$/, 'the clock event carries the time')
    if @clocks;

stop_browser($browser);
my $status = stop_cli($server, 10);
is($status, 0, 'the server shuts down cleanly after the browser leaves')
    or diag(stderr_of($server));
unlike($server->{stderr} // '', qr/(?:panic|died|uncaught)/i, 'and logs no error');
undef $server;
undef $browser;

done_testing;
