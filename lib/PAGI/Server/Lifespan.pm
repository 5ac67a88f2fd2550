package PAGI::Server::Lifespan;
use strict;
use warnings;

our $VERSION = '0.01';

use Future;
use Scalar::Util qw(blessed);

=head1 NAME

PAGI::Server::Lifespan - runs a PAGI app's lifespan scope

=head1 SYNOPSIS

    my $lifespan = PAGI::Server::Lifespan->new(
        app => $app, loop => $loop, state => \%state,
        mode => 'auto', startup_timeout => 30, shutdown_timeout => 30,
        log => sub { my ($level, $message) = @_; ... },
    );
    await $lifespan->startup;    # fails with "Lifespan startup failed: ..."
    ...
    await $lifespan->shutdown;

=head1 DESCRIPTION

The lifespan protocol of PAGI-SPEC section 3.4, knowing nothing about HTTP.
The app gets one C<lifespan> scope per process; its C<state> hash is the one
the server shallow-copies into every request scope.

An app that raises on the lifespan scope, or returns without answering
C<lifespan.startup>, does not support lifespan: startup goes on (with
C<mode =E<gt> 'on'> that is an error instead). Only
C<lifespan.startup.failed> or the startup timeout stop the server.

=head1 METHODS

=head2 new

Options: C<app>, C<loop>, C<state> (hashref), C<mode> (auto, on, off),
C<startup_timeout> and C<shutdown_timeout> (seconds, 0 = wait forever),
C<log> (callback taking a level and a message), C<worker_num> (1..N in a
prefork worker: the scope then has C<< pagi => { is_worker => 1,
worker_num => N } >>).

=cut

sub new {
    my ($class, %args) = @_;
    my $self = bless { %args, queue => [], supported => 0 }, $class;
    $self->{log} //= sub { };
    return $self;
}

=head2 startup

Returns a Future: done once the app sent C<lifespan.startup.complete> (or
does not do lifespan), failed with C<Lifespan startup failed: MESSAGE>.

=cut

sub startup {
    my ($self) = @_;
    return Future->done(0) if $self->{mode} eq 'off';
    my $startup = $self->{startup_f} = $self->{loop}->new_future;
    $self->{shutdown_f} = $self->{loop}->new_future;
    push @{ $self->{queue} }, { type => 'lifespan.startup' };

    my $scope = {
        type  => 'lifespan',
        pagi  => {
            version => '0.3', spec_version => '0.3',
            # PAGI-SPEC 2.6: set in each prefork worker, 1..N.
            is_worker => $self->{worker_num} ? 1 : 0,
            ($self->{worker_num} ? (worker_num => $self->{worker_num}) : ()),
        },
        state => $self->{state},
    };
    my $receive = sub { $self->_receive };
    my $send    = sub { $self->_send(@_) };
    my $app_f = eval { $self->{app}->($scope, $receive, $send) };
    $app_f = Future->fail($@) unless defined $app_f || !$@;
    $app_f = Future->done unless blessed $app_f && $app_f->can('on_ready');
    $self->{app_f} = $app_f;
    $app_f->on_ready(sub { $self->_app_finished($_[0]) });

    my $timeout = $self->{startup_timeout};
    return $startup unless $timeout;
    my $timer = $self->{loop}->delay_future(after => $timeout);
    return Future->wait_any(
        $startup,
        $timer->then(sub {
            my $message = "Lifespan startup timed out after ${timeout}s";
            $self->{log}->(error => $message);
            Future->fail("Lifespan startup failed: $message");
        }),
    );
}

sub _app_finished {
    my ($self, $f) = @_;
    my $startup = $self->{startup_f};
    if ($startup && !$startup->is_ready) {
        # The exception's own text, location included, is kept: a real
        # startup failure can look like a decline.
        my $why = $f->is_failed ? 'the application raised: ' . ($f->failure)[0]
                                : 'the application returned without answering lifespan.startup';
        $why =~ s/\s+\z//;
        if ($self->{mode} eq 'on') {
            $startup->fail("Lifespan startup failed: lifespan_mode is 'on' but $why");
        }
        else {
            $self->{log}->(info => "Lifespan not supported, continuing without it ($why)");
            $startup->done(0);
        }
    }
    elsif ($f->is_failed) {
        my $err = ($f->failure)[0];
        $self->{log}->(error => "Lifespan app failed after startup: $err");
    }
    my $shutdown = $self->{shutdown_f};
    $shutdown->done if $shutdown && !$shutdown->is_ready && !$self->{supported};
    if ($shutdown && !$shutdown->is_ready && $self->{shutdown_asked}) {
        $shutdown->done;
    }
}

sub _receive {
    my ($self) = @_;
    return Future->done(shift @{ $self->{queue} }) if @{ $self->{queue} };
    return $self->{receive_f} = $self->{loop}->new_future;
}

sub _deliver {
    my ($self, $event) = @_;
    if (my $f = delete $self->{receive_f}) {
        $f->done($event) unless $f->is_ready;
    }
    else {
        push @{ $self->{queue} }, $event;
    }
}

sub _send {
    my ($self, $event) = @_;
    my $type = ref $event eq 'HASH' ? $event->{type} // '' : '';
    if ($type eq 'lifespan.startup.complete') {
        $self->{supported} = 1;
        $self->{startup_f}->done(1) unless $self->{startup_f}->is_ready;
    }
    elsif ($type eq 'lifespan.startup.failed') {
        my $message = $event->{message} // '';
        $self->{startup_f}->fail("Lifespan startup failed: $message") unless $self->{startup_f}->is_ready;
    }
    elsif ($type eq 'lifespan.shutdown.complete') {
        $self->{shutdown_f}->done unless $self->{shutdown_f}->is_ready;
    }
    elsif ($type eq 'lifespan.shutdown.failed') {
        $self->{log}->(error => 'Lifespan shutdown failed: ' . ($event->{message} // ''));
        $self->{shutdown_f}->done unless $self->{shutdown_f}->is_ready;
    }
    else {
        return Future->fail("Unrecognized event type '$type' for lifespan protocol");
    }
    return Future->done;
}

=head2 shutdown

Returns a Future done once the app answered C<lifespan.shutdown> (or
immediately when the app does not do lifespan), bounded by
C<shutdown_timeout>.

=cut

sub shutdown {
    my ($self) = @_;
    return Future->done unless $self->{supported} && $self->{shutdown_f};
    my $done = $self->{shutdown_f};
    return $done if $done->is_ready;
    # An app that already ended (a failure after startup) cannot answer.
    if ($self->{app_f} && $self->{app_f}->is_ready) {
        $done->done;
        return $done;
    }
    $self->{shutdown_asked} = 1;
    $self->_deliver({ type => 'lifespan.shutdown' });
    my $timeout = $self->{shutdown_timeout};
    return $done unless $timeout;
    return Future->wait_any(
        $done,
        $self->{loop}->delay_future(after => $timeout)->then(sub {
            $self->{log}->(warn => "Lifespan shutdown timed out after ${timeout}s");
            Future->done;
        }),
    );
}

1;
