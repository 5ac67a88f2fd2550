use strict;
use warnings;
use Test::More;
use FindBin;
use lib "$FindBin::Bin/lib";

use PAGI::Test::Server qw(loop start_server stop_server raw_exchange parse_responses http_get wait_for);
use PAGI::Server;
use Future::AsyncAwait;
use IO::Socket::IP;
use IO::Select;
use Time::HiRes ();

# Lifespan (PAGI-SPEC 3.4) as run by PAGI::Server: startup gates accepting,
# state is shallow-copied into requests, declining apps are tolerated,
# failure and timeout stop listen, shutdown comes after the last request.

my $loop = loop();

sub now { Time::HiRes::time() }

sub new_server {
    my (%args) = @_;
    my $server = PAGI::Server->new(host => '127.0.0.1', port => 0, quiet => 1, %args);
    $loop->add($server);
    return $server;
}

sub text_response {
    my ($send, $status, $text) = @_;
    return $send->({ type => 'http.response.start', status => $status,
                     headers => [ [ 'content-type', 'text/plain' ] ] })
        ->then(sub { $send->({ type => 'http.response.body', body => $text }) });
}

# A request handler that reports what its scope's state holds, then sets a
# private top-level key and bumps the shared counter.
async sub state_reporter {
    my ($scope, $receive, $send) = @_;
    my $state = $scope->{state};
    my $report = join ',',
        'db=' . ($state->{db} // 'none'),
        'x=' . ($state->{x} // 'none'),
        'hits=' . ($state->{hits} ? $state->{hits}{n} : 'none');
    $state->{x} = 'set-by-' . $scope->{path};
    $state->{hits}{n}++ if $state->{hits};
    await text_response($send, 200, $report);
}

subtest 'startup gates accepting; requests see the state startup filled in' => sub {
    my ($startup_done_at, $request_at, @types);
    my $app = async sub {
        my ($scope, $receive, $send) = @_;
        push @types, $scope->{type};
        if ($scope->{type} eq 'lifespan') {
            while (1) {
                my $ev = await $receive->();
                if ($ev->{type} eq 'lifespan.startup') {
                    await $loop->delay_future(after => 1);
                    $scope->{state}{db}   = 'connected';
                    $scope->{state}{hits} = { n => 0 };
                    $startup_done_at = now();
                    await $send->({ type => 'lifespan.startup.complete' });
                }
                elsif ($ev->{type} eq 'lifespan.shutdown') {
                    await $send->({ type => 'lifespan.shutdown.complete' });
                    return;
                }
            }
        }
        $request_at //= now();
        await state_reporter($scope, $receive, $send);
    };
    my $server = new_server(app => $app);
    my $t0 = now();
    my $lf = $server->listen;
    my $port = $server->port;
    ok($port && $port > 0, "port is known as soon as listen returns ($port)");
    ok(!$lf->is_ready, 'listen is still waiting for lifespan startup');

    # The client connects and sends its request at once, before startup is over.
    my $response_at;
    my $first = http_get($port, '/first')->on_done(sub { $response_at = now() });
    $lf->get;
    ok($startup_done_at, 'startup completed');
    cmp_ok($startup_done_at - $t0, '>=', 0.9, 'startup took its 1 s timer');
    is($server->is_running, 1, 'the server runs after startup');
    my $res = $first->get;
    is($res->{status}, 200, 'the early request got a response');
    cmp_ok($request_at, '>=', $startup_done_at, 'the app saw the request only after startup completed');
    cmp_ok($response_at, '>=', $startup_done_at, 'the response arrived only after startup completed');
    like($res->{body}, qr/\bdb=connected\b/, 'request state has db from startup');
    is($types[0], 'lifespan', 'the app was called with the lifespan scope first');

    my $second = http_get($port, '/second')->get;
    is($second->{body}, 'db=connected,x=none,hits=1',
        'a top-level key set by one request is not seen by the next; the shared hashref mutation is');
    my $third = http_get($port, '/third')->get;
    is($third->{body}, 'db=connected,x=none,hits=2', 'the shared counter keeps counting across requests');
    stop_server($server);
};

subtest 'lifespan.startup.failed makes listen fail and nothing is accepted' => sub {
    my $http_calls = 0;
    my $app = async sub {
        my ($scope, $receive, $send) = @_;
        if ($scope->{type} eq 'lifespan') {
            my $ev = await $receive->();
            await $send->({ type => 'lifespan.startup.failed', message => 'no db' });
            return;
        }
        $http_calls++;
        await text_response($send, 200, 'should not happen');
    };
    my $server = new_server(app => $app);
    my $lf = $server->listen;
    my $port = $server->port;
    ok(!eval { $lf->get; 1 }, 'listen fails');
    like($@, qr/Lifespan startup failed: no db/, 'the failure carries the app message');
    is($server->is_running, 0, 'the server is not running');

    # listen closed its listeners when startup failed: the port refuses.
    my $sock = IO::Socket::IP->new(PeerHost => '127.0.0.1', PeerPort => $port, Type => Socket::SOCK_STREAM());
    ok(!$sock && $!{ECONNREFUSED}, 'connecting afterwards is refused (the listener is closed)')
        or diag($sock ? 'the connection was accepted' : "connect: $@");
    $loop->delay_future(after => 0.2)->get;
    is($http_calls, 0, 'the app never got an http request');
    $loop->remove($server);
};

subtest 'an app that dies on the lifespan scope is served without lifespan' => sub {
    my $lifespan_calls = 0;
    my $app = async sub {
        my ($scope, $receive, $send) = @_;
        if ($scope->{type} ne 'http') {
            $lifespan_calls++;
            die "Unsupported scope type: $scope->{type}\n";
        }
        await text_response($send, 200, 'served');
    };
    my $server = new_server(app => $app);
    ok(eval { $server->listen->get; 1 }, 'listen succeeds') or diag($@);
    is($lifespan_calls, 1, 'the app was offered the lifespan scope once');
    my $res = http_get($server->port, '/')->get;
    is($res->{status}, 200, 'requests still work');
    is($res->{body}, 'served', 'with the app response');
    my $sf = $server->shutdown;
    ok(wait_for(sub { $sf->is_ready }, 5), 'shutdown completes without lifespan.shutdown');
    is($lifespan_calls, 1, 'no further lifespan call at shutdown');
    $loop->remove($server);
};

subtest 'an app that returns without answering startup is served without lifespan' => sub {
    my @events;
    my $app = async sub {
        my ($scope, $receive, $send) = @_;
        if ($scope->{type} eq 'lifespan') {
            push @events, 'lifespan-called';
            return;
        }
        await text_response($send, 200, 'ok');
    };
    my $server = new_server(app => $app);
    my $lf = $server->listen;
    ok(wait_for(sub { $lf->is_ready }, 5), 'listen completes promptly');
    ok($lf->is_done, 'listen succeeds') or diag(eval { $lf->failure });
    is_deeply(\@events, ['lifespan-called'], 'the app was offered lifespan');
    my $res = http_get($server->port, '/')->get;
    is($res->{status}, 200, 'requests work');
    stop_server($server);
};

subtest "lifespan_mode => 'off' never calls the app with lifespan" => sub {
    my @types;
    my $app = async sub {
        my ($scope, $receive, $send) = @_;
        push @types, $scope->{type};
        die "Unsupported scope type: $scope->{type}\n" unless $scope->{type} eq 'http';
        await text_response($send, 200, 'ok');
    };
    my $server = new_server(app => $app, lifespan_mode => 'off');
    $server->listen->get;
    my $res = http_get($server->port, '/')->get;
    is($res->{status}, 200, 'requests work');
    stop_server($server);
    is_deeply(\@types, ['http'], 'the app saw only the http scope, neither at startup nor at shutdown');
};

subtest 'lifespan_startup_timeout stops listen when the app never answers' => sub {
    my $app = async sub {
        my ($scope, $receive, $send) = @_;
        if ($scope->{type} eq 'lifespan') {
            await $receive->();
            await $loop->new_future;    # never completes
        }
        await text_response($send, 200, 'ok');
    };
    my $server = new_server(app => $app, lifespan_startup_timeout => 1);
    my $t0 = now();
    my $lf = $server->listen;
    ok(wait_for(sub { $lf->is_ready }, 6), 'listen gives up within a few seconds');
    my $elapsed = now() - $t0;
    ok($lf->is_failed, 'listen fails');
    like(($lf->is_failed ? ($lf->failure)[0] : ''), qr/Lifespan startup failed: .*timed out/i, 'with a timeout message');
    cmp_ok($elapsed, '>=', 0.9, 'not before the timeout');
    is($server->is_running, 0, 'the server is not running');
    $loop->remove($server);
};

subtest 'shutdown sends lifespan.shutdown after the last request and waits for the answer' => sub {
    my (@log, $in_request);
    my $app = async sub {
        my ($scope, $receive, $send) = @_;
        if ($scope->{type} eq 'lifespan') {
            while (1) {
                my $ev = await $receive->();
                push @log, $ev->{type};
                if ($ev->{type} eq 'lifespan.startup') {
                    await $send->({ type => 'lifespan.startup.complete' });
                }
                elsif ($ev->{type} eq 'lifespan.shutdown') {
                    await $loop->delay_future(after => 0.5);    # cleanup takes a while
                    push @log, 'shutdown.complete sent';
                    await $send->({ type => 'lifespan.shutdown.complete' });
                    return;
                }
            }
        }
        $in_request = 1;
        push @log, "request $scope->{path} started";
        await $loop->delay_future(after => 0.5);
        await text_response($send, 200, 'slow');
        push @log, "request $scope->{path} completed";
    };
    # shutdown_timeout bounds how long a stuck drain can hold this test.
    my ($server, $port) = start_server(app => $app, shutdown_timeout => 5);
    my $quick = http_get($port, '/quick')->get;
    is($quick->{status}, 200, 'a request before shutdown');

    my $slow = raw_exchange($port, "GET /slow HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", timeout => 8, partial_ok => 1);
    ok(wait_for(sub { $in_request && grep { $_ eq 'request /slow started' } @log }, 5), 'the slow request is in flight');
    my $t0 = now();
    my $sf = $server->shutdown;
    push @log, 'shutdown called';
    my $ok = eval { $sf->get; 1 };
    my $took = now() - $t0;
    ok($ok, 'shutdown completes') or diag($@);
    push @log, 'shutdown done';
    # The request needs 0.5 s and lifespan cleanup 0.5 s: the drain must end
    # when the request is answered, not at the shutdown_timeout of 5 s.
    cmp_ok($took, '<', 4, 'shutdown finished once the in-flight request was answered');
    my ($res) = parse_responses($slow->get);
    is($res && $res->{status}, 200, 'the in-flight request got its response during shutdown');
    is($res && $res->{body}, 'slow', 'with its body');
    is($server->is_running, 0, 'not running after shutdown');

    my %at;
    @at{@log} = 0 .. $#log;
    is_deeply([ grep { /^lifespan/ } @log ], [ 'lifespan.startup', 'lifespan.shutdown' ], 'the app got startup then shutdown');
    ok(defined $at{'lifespan.shutdown'} && defined $at{'request /slow completed'}
            && $at{'lifespan.shutdown'} > $at{'request /slow completed'},
        'lifespan.shutdown came after the last request completed')
        or diag(explain \@log);
    ok(defined $at{'shutdown.complete sent'} && $at{'shutdown done'} > $at{'shutdown.complete sent'},
        'the shutdown Future completed only after the app sent lifespan.shutdown.complete')
        or diag(explain \@log);
    $loop->remove($server);
};

done_testing;
