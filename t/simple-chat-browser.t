# Two real browser pages chat: headless Chromium opens the
# examples/simple-03-websocket page (served by bin/pagi-server) in two tabs,
# each joins the same room through the page's own vanilla-JS WebSocket client,
# sees the other arrive in its member list, sends a message, and the DOM of
# each page is read back over the DevTools protocol until the other's message
# is there.
#
# DevTools runs over --remote-debugging-pipe (NUL-separated JSON on fds 3 and
# 4) as in t/sse-browser.t; the second tab is made with Target.createTarget.
# Skips when Chromium is missing, except under CI=true where it fails.
# CHROMIUM=/path/to/binary picks another browser binary.
use strict;
use warnings;
use utf8;
use Test::More;
use FindBin;
use lib "$FindBin::Bin/lib";
use PAGI::Test::Server ();    # loads the helpers; the alarm is set below
use PAGI::Test::Chromium qw(need_chromium start_browser stop_browser cdp browser_log);
use PAGI::Test::CLI qw(ROOT start_cli stop_cli stderr_of wait_until);
use JSON::PP ();
use Time::HiRes qw(time sleep);

binmode Test::More->builder->$_, ':encoding(UTF-8)' for qw(output failure_output todo_output);

my $BROWSER_TIMEOUT = 20;    # seconds for Chromium to start and show a page
my $DOM_TIMEOUT     = 20;    # seconds for a message to reach the other page's DOM

need_chromium();

# The whole file is bounded; exit (not the default SIGALRM death) so that the
# END blocks below still kill Chromium and the server.
alarm 90;
$SIG{ALRM} = sub { diag('simple-chat-browser.t: timed out after 90 s'); exit 1 };

my $server;     # PAGI::Test::CLI child
my $browser;    # { pid, to, from, log, profile }

END {
    local $?;
    stop_browser($browser) if $browser;
    stop_cli($server, 5)   if $server;
}

# --- Server ----------------------------------------------------------------
$server = start_cli([ 'examples/simple-03-websocket/app.pl', '--quiet', '--no-access-log', '--env', 'production' ]);
ok($server->{ready}, 'the chat example listens')
    or do { diag(stderr_of($server)); done_testing; exit };
my $port = $server->{port};
my $url  = "http://127.0.0.1:$port/";


$browser = start_browser($url);

# Attaches a flat DevTools session to the page target with $target_id (or,
# without one, to the first page showing $url).
sub attach_page {
    my ($target_id) = @_;
    my ($session, $error) = (undef, '');
    wait_until(sub {
        my $targets = eval { cdp($browser, 'Target.getTargets', {}, undef, 2) };
        if (!$targets) { $error = $@; return 0 }
        my ($page) = grep { $_->{type} eq 'page' && index($_->{url}, "127.0.0.1:$port") >= 0
            && (!defined $target_id || $_->{targetId} eq $target_id) } @{ $targets->{targetInfos} };
        return (sleep(0.1), 0) unless $page;
        my $att = eval { cdp($browser, 'Target.attachToTarget', { targetId => $page->{targetId}, flatten => JSON::PP::true() }) };
        $error = $@;
        $session = $att && $att->{sessionId};
        return defined $session;
    }, $BROWSER_TIMEOUT);
    return ($session, $error);
}

# Evaluates $js in a page and returns its value, or dies.
sub evaluate {
    my ($session, $js) = @_;
    my $res = cdp($browser, 'Runtime.evaluate', { expression => $js, returnByValue => JSON::PP::true() }, $session);
    die 'page script failed: ' . JSON::PP->new->encode($res->{exceptionDetails}) . "\n" if $res->{exceptionDetails};
    return $res->{result}{value};
}

my ($first, $err1) = attach_page();
ok(defined $first, "Chromium shows $url and DevTools attaches to it")
    or do { diag("last error: $err1"); diag("command: @{ $browser->{argv} }"); diag(browser_log($browser)); done_testing; exit };
my $created = eval { cdp($browser, 'Target.createTarget', { url => $url }) };
my ($second, $err2) = $created ? attach_page($created->{targetId}) : (undef, $@);
ok(defined $second, 'a second tab shows the page too')
    or do { diag("last error: $err2"); diag(browser_log($browser)); done_testing; exit };

# Waits until $cond->($value of $js in $session) holds; returns the last value.
sub wait_page {
    my ($session, $js, $cond) = @_;
    my ($value, $error);
    my $ok = wait_until(sub {
        $value = eval { evaluate($session, $js) };
        $error = $@;
        return (defined $value && $cond->($value)) || (sleep(0.1), 0);
    }, $DOM_TIMEOUT);
    return ($ok, $value, $error);
}

# The page defines join(name, room) and say(text) for its forms; the test
# calls them, once the page's script has run.
my $room = 'browser-' . $$;
my @pages = ([ 'Ann', $first ], [ 'Bøb', $second ]);
# One after the other, so the first page is in the room when the second joins.
for my $p (@pages) {
    my ($ok, $v, $e) = wait_page($p->[1], 'typeof window.join', sub { $_[0] eq 'function' });
    ok($ok, "$p->[0]'s page has loaded its script") or diag($e // $v);
    eval { evaluate($p->[1], sprintf 'join(%s, %s)', JSON::PP->new->encode($p->[0]), JSON::PP->new->encode($room)); 1 }
        or diag($@);
    ($ok, $v, $e) = wait_page($p->[1], q{document.getElementById('status').textContent}, sub { $_[0] eq "connected to $room as $p->[0]" });
    ok($ok, "$p->[0]'s page says it is connected to the room") or diag('status: ' . ($v // '') . ' ' . ($e // ''));
}
for my $p (@pages) {
    my ($ok, $members, $e) = wait_page($p->[1], q{document.getElementById('members').textContent},
        sub { $_[0] eq 'Ann, Bøb' });
    ok($ok, "$p->[0]'s page lists both members") or diag('members: ' . ($members // '') . ' ' . ($e // ''));
}

my $LOG = q{JSON.stringify(Array.from(document.querySelectorAll('#log li'), li => [li.className, li.textContent]))};
my %text = (Ann => "hello from Ann, café ✓ $$", 'Bøb' => "and hello from Bøb $$");
evaluate($_->[1], sprintf 'say(%s)', JSON::PP->new->encode($text{ $_->[0] })) for @pages;
for my $i (0, 1) {
    my ($me, $session) = @{ $pages[$i] };
    my $other = $pages[1 - $i][0];
    my $want = "$other: $text{$other}";
    my ($seen, $log, $e) = wait_page($session, $LOG, sub { grep { $_->[0] eq 'message' && $_->[1] eq $want } @{ JSON::PP->new->decode($_[0]) } });
    ok($seen, "$me\'s page shows $other\'s message") or diag('log: ' . ($log // '') . ' ' . ($e // ''));
    my @lines = $log ? @{ JSON::PP->new->decode($log) } : ();
    ok(scalar(grep { $_->[0] eq 'message' && $_->[1] eq "$me: $text{$me}" } @lines), "and its own") or diag("log: $log");
}
my ($joined, $log1) = wait_page($first, $LOG, sub { 1 });
ok(scalar(grep { $_->[0] eq 'join' && $_->[1] eq 'Bøb joined' } @{ JSON::PP->new->decode($log1 // '[]') }),
    'the first page was told that Bøb joined');

# Closing the second tab leaves the room; the first page hears it.
eval { cdp($browser, 'Target.closeTarget', { targetId => $created->{targetId} }); 1 } or diag($@);
my ($left, $log2) = wait_page($first, $LOG, sub { grep { $_->[0] eq 'leave' && $_->[1] eq 'Bøb left' } @{ JSON::PP->new->decode($_[0]) } });
ok($left, 'when the second tab closes, the first page shows that Bøb left') or diag("log: " . ($log2 // ''));
my ($alone, $members) = wait_page($first, q{document.getElementById('members').textContent}, sub { $_[0] eq 'Ann' });
ok($alone, 'and only Ann in the member list') or diag("members: " . ($members // ''));

stop_browser($browser);
my $exit = stop_cli($server, 10);
is($exit, 0, 'the server shuts down cleanly after the browser leaves') or diag(stderr_of($server));
unlike($server->{stderr} // '', qr/(?:panic|died|uncaught|\berror\b)/i, 'and logs no error');
undef $server;
undef $browser;

done_testing;
