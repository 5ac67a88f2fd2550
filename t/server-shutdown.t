# Graceful shutdown (issue 3, PAGI-SPEC 3.4 shutdown order, 8.4 signals):
# in process via $server->shutdown, and as a process via bin/pagi-server
# with SIGTERM / SIGINT. Stop accepting at once, close idle keep-alive
# connections at once, let requests in flight finish within shutdown_timeout,
# tell long-lived responses (server_shutdown), then lifespan shutdown, exit 0.
use strict;
use warnings;
use Test::More;
use FindBin;
use lib "$FindBin::Bin/lib";

use PAGI::Test::Server qw(loop start_server stop_server raw_exchange parse_responses wait_for);
use PAGI::Test::HTTP qw(open_conn responses_done complete_responses);
use PAGI::Test::CLI qw(start_cli stop_cli stderr_of slurp);
use PAGI::Server;
use Future::AsyncAwait;
use File::Temp ();
use IO::Socket::IP;
use IO::Select;
use Socket ();
use Time::HiRes ();

$SIG{PIPE} = 'IGNORE';

my $loop = loop();
sub now { Time::HiRes::time() }

my @servers;    # in-process servers still to stop
my @timers;     # long app timers, cancelled at the end
END {
    $_->cancel for grep { !$_->is_ready } @timers;
    for my $s (@servers) { eval { stop_server($s) if $s->loop } }
    # PAGI::Test::CLI's END kills and reaps any child still running.
}

sub serve {
    my (%args) = @_;
    my ($server, $port) = start_server(%args);
    push @servers, $server;
    return ($server, $port);
}

sub forget_server {
    my ($server) = @_;
    @servers = grep { $_ != $server } @servers;
    $server->loop->remove($server) if $server->loop;
}

sub get_req { my ($path, @extra) = @_; "GET $path HTTP/1.1\r\nHost: 127.0.0.1\r\n" . join('', map { "$_\r\n" } @extra) . "\r\n" }

sub long_timer {
    my $t = $loop->delay_future(after => 30);
    push @timers, $t;
    return $t;
}

async sub text_response {
    my ($send, $status, $text) = @_;
    await $send->({ type => 'http.response.start', status => $status,
                    headers => [ [ 'content-type', 'text/plain' ] ] });
    await $send->({ type => 'http.response.body', body => $text });
}

# Lifespan handler recording when shutdown arrived.
async sub lifespan {
    my ($receive, $send, $log) = @_;
    while (1) {
        my $ev = await $receive->();
        if ($ev->{type} eq 'lifespan.startup') {
            await $send->({ type => 'lifespan.startup.complete' });
        }
        elsif ($ev->{type} eq 'lifespan.shutdown') {
            $log->{lifespan_shutdown} = now();
            await $send->({ type => 'lifespan.shutdown.complete' });
            return;
        }
    }
}

subtest 'shutdown: idle keep-alive closed at once, in-flight request finishes, then lifespan shutdown' => sub {
    my (%log, @paths);
    my $app = async sub {
        my ($scope, $receive, $send) = @_;
        return await lifespan($receive, $send, \%log) if $scope->{type} eq 'lifespan';
        push @paths, $scope->{path};
        if ($scope->{path} eq '/slow') {
            $log{slow_started} = now();
            await $loop->delay_future(after => 1);
            await text_response($send, 200, 'slow done');
            $log{slow_sent} = now();
            return;
        }
        await text_response($send, 200, "fast $scope->{path}");
    };
    my ($server, $port) = serve(app => $app, shutdown_timeout => 10);

    my $idle = open_conn($port);
    $idle->write(get_req('/fast'));
    ok(eval { $idle->read_until(responses_done(1), 5)->get; 1 }, 'the keep-alive connection got its response') or diag($@);
    my $slow = open_conn($port);
    $slow->write(get_req('/slow'));
    ok(wait_for(sub { $log{slow_started} }, 5), 'the slow request is in the app');

    my $t0 = now();
    my $sf = $server->shutdown;
    my ($idle_eof_at, $slow_done_at);
    my $idle_f = $idle->wait_eof(3)->on_done(sub { $idle_eof_at = now() });
    my $slow_f = $slow->read_until(sub { $_[1] }, 8)->on_done(sub { $slow_done_at = now() });

    ok(eval { $idle_f->get; 1 }, 'the idle keep-alive connection was closed') or diag($@);
    cmp_ok(($idle_eof_at // 99) - $t0, '<', 0.5, sprintf('at once (%.3fs after shutdown began)', ($idle_eof_at // 99) - $t0));
    is(complete_responses($idle->buffer, eof => 1), 1, 'and got nothing besides its one response');

    # Shutdown began in the engine (the idle connection is gone): nothing new is served.
    my $late = IO::Socket::IP->new(PeerHost => '127.0.0.1', PeerPort => $port, Type => Socket::SOCK_STREAM());
    my $late_bytes = '';
    if ($late) {
        $late->autoflush(1);
        syswrite $late, get_req('/late', 'Connection: close');
        my $sel = IO::Select->new($late);
        my $until = now() + 8;
        # The loop must keep running for the in-flight request; poll between ticks.
        while (now() < $until) {
            $loop->loop_once(0.05);
            next unless $sel->can_read(0);
            my $n = sysread $late, $late_bytes, 4096, length $late_bytes;
            last unless $n;
        }
        close $late;
    }
    is($late_bytes, '', 'a connection made after shutdown began gets no response (' . ($late ? 'closed' : 'refused') . ')');

    my $slow_bytes = eval { $slow_f->get } // '';
    my ($r) = parse_responses($slow_bytes);
    is($r && $r->{status}, 200, 'the in-flight slow request got its 200');
    is($r && $r->{body}, 'slow done', 'with its full body');
    ok($r && !$r->{incomplete}, 'complete by its framing');
    is(lc($r && $r->{header}{connection} // ''), 'close', 'with connection: close');
    ok($slow_done_at, 'then the connection closed');
    ok(!grep({ $_ eq '/late' } @paths), 'the app never saw the late request');

    ok(eval { $sf->get; 1 }, 'the shutdown Future completed') or diag($@);
    my $shutdown_took = now() - $t0;
    cmp_ok($shutdown_took, '<', 5, sprintf('well before shutdown_timeout 10 (%.2fs)', $shutdown_took));
    ok($log{lifespan_shutdown}, 'lifespan shutdown ran');
    cmp_ok($log{lifespan_shutdown} // 0, '>=', $log{slow_sent} // 9e9, 'after the in-flight request completed');
    is($server->is_running, 0, 'the server is no longer running');
    my $after = IO::Socket::IP->new(PeerHost => '127.0.0.1', PeerPort => $port, Type => Socket::SOCK_STREAM());
    ok(!$after, 'the port refuses connections once shutdown completed');
    forget_server($server);
};

subtest 'a streaming response is told server_shutdown via $receive and says goodbye' => sub {
    my (%log, @events);
    my $app = async sub {
        my ($scope, $receive, $send) = @_;
        return await lifespan($receive, $send, \%log) if $scope->{type} eq 'lifespan';
        my $req = await $receive->();
        push @events, $req->{type};
        await $send->({ type => 'http.response.start', status => 200,
                        headers => [ [ 'content-type', 'text/plain' ] ] });
        my $disconnect = $receive->();
        $log{streaming} = now();
        my $n = 0;
        until ($disconnect->is_ready) {
            await $send->({ type => 'http.response.body', body => 'tick ' . $n++ . "\n", more => 1 });
            await Future->wait_any($loop->delay_future(after => 0.1), $disconnect->without_cancel);
        }
        my $ev = $disconnect->get;
        $log{disconnect_at} = now();
        $log{disconnect} = $ev;
        $log{ticks} = $n;
        await $send->({ type => 'http.response.body', body => "goodbye\n", more => 0 });
        $log{goodbye_sent} = now();
    };
    my ($server, $port) = serve(app => $app, shutdown_timeout => 10);
    my $c = open_conn($port);
    $c->write(get_req('/stream'));
    ok(eval { $c->read_until(qr/tick 2\n/, 5)->get; 1 }, 'the stream is flowing') or diag($@);

    my $t0 = now();
    my $sf = $server->shutdown;
    my $all = eval { $c->read_until(sub { $_[1] }, 6)->get } // $c->buffer;
    ok($log{disconnect}, '$receive completed after shutdown began');
    is_deeply($log{disconnect}, { type => 'http.disconnect', reason => 'server_shutdown' },
        "it yielded {type => 'http.disconnect', reason => 'server_shutdown'}");
    cmp_ok(($log{disconnect_at} // 99) - $t0, '<', 0.5, 'promptly after shutdown began');
    my ($r) = parse_responses($all);
    is($r && $r->{status}, 200, 'response 200');
    ok($r && $r->{chunked}, 'chunked');
    ok($r && !$r->{incomplete}, 'properly terminated (last chunk and final CRLF)');
    like($r && $r->{body} // '', qr/\Atick 0\ntick 1\n(?:tick \d+\n)*goodbye\n\z/, 'ticks, then the goodbye chunk last');
    like($all, qr/goodbye\n\r\n0\r\n\r\n\z/, 'the goodbye chunk is followed by the terminating chunk on the wire');
    ok($c->is_eof, 'the connection closed after the response');
    ok(eval { $sf->get; 1 }, 'shutdown completed') or diag($@);
    cmp_ok(now() - $t0, '<', 5, 'well before shutdown_timeout');
    cmp_ok($log{lifespan_shutdown} // 0, '>=', $log{goodbye_sent} // 9e9, 'lifespan shutdown after the stream finished');
    forget_server($server);
};

subtest 'grace expiry: shutdown_timeout 1 with apps that never answer' => sub {
    my (%log, %conn_of, %events);
    my $app = async sub {
        my ($scope, $receive, $send) = @_;
        return await lifespan($receive, $send, \%log) if $scope->{type} eq 'lifespan';
        my $path = $scope->{path};
        $conn_of{$path} = $scope->{'pagi.connection'};
        if ($path eq '/get') {
            # Reads its (empty) body, then waits for the next event and never answers.
            push @{ $events{$path} }, await $receive->();
            push @{ $events{$path} }, await $receive->();
            $log{get_event_at} = now();
        }
        else {
            # Waits for a body that never fully arrives.
            while (1) {
                my $ev = await $receive->();
                push @{ $events{$path} }, $ev;
                last if $ev->{type} eq 'http.disconnect' || !$ev->{more};
            }
            $log{post_event_at} = now();
        }
        eval { await long_timer(); 1 };
    };
    my ($server, $port) = serve(app => $app, shutdown_timeout => 1);
    my $get = open_conn($port);
    $get->write(get_req('/get'));
    my $post = open_conn($port);
    $post->write("POST /post HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 200000\r\n\r\n" . ('y' x 100));
    ok(wait_for(sub { $conn_of{'/get'} && $conn_of{'/post'} && $events{'/get'} && $events{'/post'} }, 5), 'both requests are in the app');

    my $t0 = now();
    my $sf = $server->shutdown;
    my ($get_eof, $post_eof);
    my $gf = $get->wait_eof(5)->on_done(sub { $get_eof = now() });
    my $pf = $post->wait_eof(5)->on_done(sub { $post_eof = now() });
    my $done = eval { Future->wait_any($sf, $loop->delay_future(after => 6)->then_fail('shutdown did not complete'))->get; 1 };
    my $took = now() - $t0;
    ok($done, 'shutdown completed') or diag($@);
    cmp_ok($took, '>=', 0.9, sprintf('after the grace period (%.2fs)', $took));
    cmp_ok($took, '<=', 3, 'within ~1-3 s');
    ok(eval { $gf->get; 1 }, 'the GET client saw its connection closed');
    ok(eval { $pf->get; 1 }, 'the POST client saw its connection closed');
    cmp_ok(($get_eof // 99) - $t0, '>=', 0.9, 'not before the grace expired');
    unlike($get->buffer, qr{\AHTTP/1\.\d 2}, 'no success response on the GET connection');

    is_deeply($events{'/get'}[1], { type => 'http.disconnect', reason => 'server_shutdown' },
        "the GET app's pending \$receive yielded http.disconnect (server_shutdown) when the grace began");
    my $last = $events{'/post'}[-1];
    is($last && $last->{type}, 'http.disconnect', "the POST app's pending \$receive yielded http.disconnect");
    cmp_ok(($log{post_event_at} // 0) - $t0, '>=', 0.9, 'when the grace expired');
    is($conn_of{'/get'}->disconnect_reason, 'server_shutdown', "GET pagi.connection: reason 'server_shutdown'");
    is($conn_of{'/post'}->disconnect_reason, 'server_shutdown', "POST pagi.connection: reason 'server_shutdown'");
    ok(!$conn_of{'/post'}->is_connected, 'is_connected false');
    ok($log{lifespan_shutdown}, 'lifespan shutdown still ran');
    $_->cancel for grep { !$_->is_ready } @timers;
    forget_server($server);
};

# ---------------------------------------------------------------------------
# Process level: bin/pagi-server children.

my $dir = File::Temp->newdir;
my $events_file = "$dir/events";
my $app_file = "$dir/app.pl";
{
    open my $fh, '>', $app_file or die "write $app_file: $!";
    print {$fh} <<'PERL';
use strict; use warnings;
use Future::AsyncAwait;
use IO::Async::Loop;
use Time::HiRes ();
my $events = $ENV{SHUTDOWN_TEST_EVENTS};
sub note_event {
    return unless $events;
    open my $fh, '>>', $events or return;
    printf {$fh} "%s %.3f\n", $_[0], Time::HiRes::time();
    close $fh;
}
async sub answer {
    my ($send, $text) = @_;
    await $send->({ type => 'http.response.start', status => 200, headers => [ [ 'content-type', 'text/plain' ] ] });
    await $send->({ type => 'http.response.body', body => $text });
}
my $app = async sub {
    my ($scope, $receive, $send) = @_;
    if ($scope->{type} eq 'lifespan') {
        while (1) {
            my $ev = await $receive->();
            if ($ev->{type} eq 'lifespan.startup') {
                note_event('lifespan-startup');
                if (my $delay = $ENV{SHUTDOWN_TEST_STARTUP_DELAY}) {
                    await IO::Async::Loop->new->delay_future(after => $delay);
                }
                await $send->({ type => 'lifespan.startup.complete' });
            }
            elsif ($ev->{type} eq 'lifespan.shutdown') {
                note_event('lifespan-shutdown');
                await $send->({ type => 'lifespan.shutdown.complete' });
                return;
            }
        }
    }
    my $path = $scope->{path};
    if ($path eq '/slow') {
        note_event('slow-start');
        await IO::Async::Loop->new->delay_future(after => 1);
        await answer($send, 'slow done');
        note_event('slow-sent');
        return;
    }
    if ($path eq '/never') {
        note_event('never-start');
        await IO::Async::Loop->new->delay_future(after => 60);
        return;
    }
    await answer($send, "fast $path");
};
$app;
PERL
    close $fh;
}

sub events { my $t = slurp($events_file); return { map { split / / } split /\n/, $t } }

sub child_exited { PAGI::Test::CLI::_exited($_[0]) }

sub start_child {
    my (@args) = @_;
    my %env = (SHUTDOWN_TEST_EVENTS => $events_file);
    %env = (%env, %{ shift @args }) if ref $args[0];
    unlink $events_file;
    my $child = start_cli([ '--no-access-log', @args, $app_file ], env => \%env);
    ok($child->{ready}, "pagi-server " . join(" ", @args, "app.pl") . " is up") or diag(stderr_of($child));
    return $child;
}

# Waits (running the loop) for the child to exit; returns seconds taken from $t0.
sub wait_exit {
    my ($child, $t0, $limit) = @_;
    my $gone = wait_for(sub { child_exited($child) }, $limit);
    return $gone ? now() - $t0 : undef;
}

for my $signal (qw(TERM INT)) {
    subtest "SIG$signal with an in-flight slow request and an idle keep-alive connection" => sub {
        my $child = start_child();
        return unless $child->{ready};
        my $port = $child->{port};
        my $idle = open_conn($port);
        $idle->write(get_req('/fast'));
        ok(eval { $idle->read_until(responses_done(1), 5)->get; 1 }, 'the keep-alive connection got a response') or diag($@);
        my $slow = open_conn($port);
        $slow->write(get_req('/slow'));
        ok(wait_for(sub { events()->{'slow-start'} }, 5), 'the slow request is in the app');

        my $t0 = now();
        kill $signal, $child->{pid};
        my ($idle_eof_at);
        my $idle_f = $idle->wait_eof(3)->on_done(sub { $idle_eof_at = now() });
        my $slow_f = $slow->read_until(sub { $_[1] }, 6);
        ok(eval { $idle_f->get; 1 }, 'the idle connection was closed') or diag($@);
        cmp_ok(($idle_eof_at // 99) - $t0, '<', 0.9, 'before the slow request could finish');
        my ($r) = parse_responses(eval { $slow_f->get } // $slow->buffer);
        is($r && $r->{status}, 200, 'the slow request got its 200');
        is($r && $r->{body}, 'slow done', 'with its body');
        is(lc($r && $r->{header}{connection} // ''), 'close', 'and connection: close');

        my $took = wait_exit($child, $t0, 8);
        ok(defined $took, 'the process exited') or stop_cli($child, 1);
        cmp_ok($took // 99, '<', 5, sprintf('within a few seconds (%.2fs)', $took // 99));
        is($child->{status}, 0, 'exit status 0') or diag(stderr_of($child));
        my $ev = events();
        ok($ev->{'lifespan-shutdown'}, 'lifespan shutdown ran');
        cmp_ok($ev->{'lifespan-shutdown'} // 0, '>=', $ev->{'slow-sent'} // 9e9, 'after the slow request was answered');
        $idle->close;
        $slow->close;
    };
}

subtest 'a request written just before SIGTERM is answered (5 times)' => sub {
    for my $round (1 .. 5) {
        my $child = start_child();
        next unless $child->{ready};
        my $port = $child->{port};
        # Serving for sure (lifespan startup done, signal handlers in place):
        # the startup window is the subject of the next subtest.
        my ($warm) = parse_responses(PAGI::Test::CLI::http_raw($port, get_req('/warm', 'Connection: close')));
        is($warm && $warm->{status}, 200, "round $round: the server is serving");
        my $sock = IO::Socket::IP->new(PeerHost => '127.0.0.1', PeerPort => $port, Type => Socket::SOCK_STREAM());
        ok($sock, "round $round: connected") or next;
        syswrite $sock, get_req("/r$round");
        kill 'TERM', $child->{pid};
        my $t0 = now();
        my $buf = '';
        my $sel = IO::Select->new($sock);
        while ((my $left = $t0 + 6 - now()) > 0) {
            last unless $sel->can_read($left);
            my $n = sysread $sock, $buf, 65536, length $buf;
            last unless $n;
        }
        close $sock;
        my ($r) = parse_responses($buf);
        is($r && $r->{status}, 200, "round $round: the request was answered 200");
        is($r && $r->{body}, "fast /r$round", "round $round: with its own response");
        my $took = wait_exit($child, $t0, 8);
        ok(defined $took, "round $round: the process exited") or stop_cli($child, 1);
        is($child->{status}, 0, "round $round: exit status 0") or diag(stderr_of($child));
    }
};

# The port accepts connections from the moment it is bound, which is before
# lifespan startup; SIGTERM in that window must still be a graceful exit,
# not death by the signal's default action.
subtest 'SIGTERM while lifespan startup is still running (port already open)' => sub {
    my $child = start_child({ SHUTDOWN_TEST_STARTUP_DELAY => 1.5 });
    return unless $child->{ready};
    ok(wait_for(sub { events()->{'lifespan-startup'} }, 5), 'lifespan startup is running');
    ok(!events()->{'lifespan-shutdown'}, 'and not done yet');
    my $c = open_conn($child->{port});
    $c->write(get_req('/early'));
    $loop->delay_future(after => 0.1)->get;
    my $t0 = now();
    kill 'TERM', $child->{pid};
    my $closed = eval { $c->wait_eof(8)->get; 1 };
    my $took = wait_exit($child, $t0, 8);
    ok(defined $took, 'the process exited') or stop_cli($child, 1);
    my $status = $child->{status} // -1;
    is($status & 127, 0, 'it was not killed by SIGTERM (the handler was in place)')
        or diag(sprintf 'wait status %d: terminated by signal %d', $status, $status & 127);
    is($status, 0, 'exit status 0');
    ok($closed, 'the early client is not left hanging');
    my ($r) = parse_responses($c->buffer);
    is($r && $r->{status}, 200, 'the request sent before the signal was answered, not lost')
        or diag('client got: ' . ($c->buffer eq '' ? '(nothing)' : substr($c->buffer, 0, 80)));
    $c->close;
};

subtest '--shutdown-timeout 1 with an app that never answers' => sub {
    my $child = start_child('--shutdown-timeout', 1);
    return unless $child->{ready};
    my $c = open_conn($child->{port});
    $c->write(get_req('/never'));
    ok(wait_for(sub { events()->{'never-start'} }, 5), 'the request is in the app');
    my $t0 = now();
    kill 'TERM', $child->{pid};
    my $closed_at;
    my $cf = $c->wait_eof(6)->on_done(sub { $closed_at = now() });
    my $took = wait_exit($child, $t0, 8);
    ok(defined $took, 'the process exited') or stop_cli($child, 1);
    cmp_ok($took // 99, '<=', 4, sprintf('within ~4 s (%.2fs)', $took // 99));
    cmp_ok($took // 0, '>=', 0.9, 'after the 1 s grace');
    is($child->{status}, 0, 'exit status 0') or diag(stderr_of($child));
    ok(eval { $cf->get; 1 }, 'the client saw its connection closed') or diag($@);
    unlike($c->buffer, qr{\AHTTP/1\.\d 2}, 'without a success response');
    ok(events()->{'lifespan-shutdown'}, 'lifespan shutdown ran');
    $c->close;
};

done_testing;
